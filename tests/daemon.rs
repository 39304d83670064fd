//! The daemon over real HTTP on loopback: every route, the auth matrix, bad bodies, the
//! concurrency queue, locks, reloads, shutdown and the CLI as a client. Each test starts its
//! own `shiphat serve` on a free port with its own data directory.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shiphat_store::{RunStatus, SqliteStore, Store};
use std::collections::HashMap;
use support::{Daemon, Run, TestDir};

/// How long any wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

const WEB: &str = r#"
name: web
inputs:
  environment: { type: choice, choices: [staging, prod], default: staging }
  sleep: { type: number, default: 0 }
concurrency: "web-${{ inputs.environment }}"
steps:
  - id: build
    uses: echo
    with: { message: "building for ${{ inputs.environment }}", outputs: { artifact: "web.tar" } }
  - id: deploy
    uses: echo
    needs: build
    with: { message: "deploying ${{ steps.build.outputs.artifact }}", sleep_ms: "${{ inputs.sleep }}" }
"#;

const DOCS: &str = r#"
name: docs
concurrency: { key: docs, queue: false }
steps:
  - id: publish
    uses: echo
    with: { message: publishing, sleep_ms: 400 }
"#;

/// `shiphat serve` on the test's `data` and `workflows` folders, plus `extra`.
pub fn start(dir: &TestDir, extra: &[&str]) -> Daemon {
    let mut args = vec!["--data-dir", "data", "--workflows", "workflows"];
    args.extend(extra);
    Daemon::start(dir, &args)
}

pub fn agent() -> ureq::Agent {
    support::agent(DEADLINE)
}

/// One request; returns the status and the JSON body (or the text as a JSON string).
pub fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    call_with(daemon, method, path, token, body, &[])
}

pub fn call_with(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut all: Vec<(&str, &str)> = Vec::new();
    if let Some(auth) = &auth {
        all.push(("Authorization", auth));
    }
    if matches!(method, "POST" | "PUT") {
        all.push(("Content-Type", "application/json"));
    }
    all.extend(headers);
    let body = matches!(method, "POST" | "PUT").then(|| body.unwrap_or(""));
    let (status, _, value) = daemon.call(method, path, &all, body);
    (status, value)
}

/// Creates a token with `shiphat token create` against the test's data directory.
pub fn token(dir: &TestDir, name: &str, role: &str, patterns: &[&str]) -> String {
    let mut command = dir.shiphat();
    command
        .args(["token", "create", name, "--role", role, "--data-dir"])
        .arg(dir.path().join("data"));
    for p in patterns {
        command.args(["--pattern", p]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(
        token.len(),
        64,
        "a token is 32 random bytes in hex: {token}"
    );
    token
}

/// Polls a run until `done` says so, or fails the test at the deadline.
pub fn wait_run(daemon: &Daemon, token: &str, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, run) = call(
            daemon,
            "GET",
            &format!("/api/v1/runs/{id}"),
            Some(token),
            None,
        );
        assert_eq!(status, 200, "{run}");
        if done(&run) {
            return run;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "run {id} never reached the expected state: {run}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn terminal(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("succeeded" | "failed" | "cancelled")
    )
}

fn start_run(daemon: &Daemon, token: &str, body: Value) -> String {
    let (status, answer) = call(
        daemon,
        "POST",
        "/api/v1/runs",
        Some(token),
        Some(&body.to_string()),
    );
    assert_eq!(status, 202, "{answer}");
    answer["id"].as_str().unwrap().to_owned()
}

/// The SSE stream of a run, read to its end: `(id, data)` per event.
fn sse(
    daemon: &Daemon,
    token: &str,
    id: &str,
    last_event_id: Option<&str>,
) -> Vec<(String, Value)> {
    let mut request = agent()
        .get(&daemon.url(&format!("/api/v1/runs/{id}/events")))
        .header("Authorization", format!("Bearer {token}"));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last);
    }
    let mut response = request.call().unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let reader = BufReader::new(response.body_mut().as_reader());
    let mut events = Vec::new();
    let (mut event_id, mut data) = (String::new(), String::new());
    for line in reader.lines() {
        let line = line.unwrap();
        if let Some(v) = line.strip_prefix("id:") {
            event_id = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            events.push((event_id.clone(), serde_json::from_str(&data).unwrap()));
            data.clear();
        }
    }
    events
}

fn setup(dir: &TestDir) {
    dir.write("workflows/web.yaml", WEB);
    dir.write("workflows/docs.yaml", DOCS);
}

#[test]
fn every_route_the_auth_matrix_and_bad_bodies() {
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let deployer = token(&dir, "ci", "deployer", &["web/staging"]);
    let viewer = token(&dir, "eve", "viewer", &[]);
    let daemon = start(&dir, &[]);

    // Open routes.
    assert_eq!(call(&daemon, "GET", "/healthz", None, None).0, 200);
    let (status, doc) = call(&daemon, "GET", "/api/v1/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // No token, or a wrong one: 401 on every API route.
    for (method, path) in [
        ("GET", "/api/v1/runs"),
        ("POST", "/api/v1/runs"),
        ("GET", "/api/v1/workflows"),
    ] {
        let (status, body) = call(&daemon, method, path, None, Some("{}"));
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("bearer token"),
            "{body}"
        );
        assert_eq!(
            call(&daemon, method, path, Some("not-a-token"), Some("{}")).0,
            401
        );
    }

    // Tokens are an admin's: 401 without a token, 403 below admin.
    let new_token = r#"{"name": "x", "roles": ["viewer"]}"#;
    for (method, path) in [
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/tokens"),
        ("DELETE", "/api/v1/tokens/eve"),
    ] {
        assert_eq!(call(&daemon, method, path, None, Some(new_token)).0, 401);
        for who in [&viewer, &deployer] {
            let (status, body) = call(&daemon, method, path, Some(who), Some(new_token));
            assert_eq!(status, 403, "{method} {path}: {body}");
            assert!(
                body["error"].as_str().unwrap().contains("`admin`"),
                "{body}"
            );
        }
    }

    // Workflows, with their inputs.
    let (status, list) = call(&daemon, "GET", "/api/v1/workflows", Some(&viewer), None);
    assert_eq!(status, 200);
    let web = list["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .unwrap();
    assert_eq!(web["inputs"][0]["name"], "environment");
    assert_eq!(
        web["inputs"][0]["type"]["choice"],
        json!(["staging", "prod"])
    );

    // The role matrix for starting runs.
    let run = json!({"workflow": "web", "inputs": {"environment": "staging"}}).to_string();
    let (status, body) = call(&daemon, "POST", "/api/v1/runs", Some(&viewer), Some(&run));
    assert_eq!(status, 403);
    assert!(
        body["error"].as_str().unwrap().contains("`deployer`"),
        "{body}"
    );
    let (status, body) = call(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&deployer),
        Some(&json!({"workflow": "web", "inputs": {"environment": "prod"}}).to_string()),
    );
    assert_eq!(status, 403);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("`web/prod`") && message.contains("`web/staging`"),
        "{body}"
    );
    let (status, body) = call(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&deployer),
        Some(r#"{"workflow":"docs"}"#),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("`docs`"), "{body}");
    let ours = start_run(
        &daemon,
        &deployer,
        json!({"workflow": "web", "inputs": {"environment": "staging"}}),
    );
    let theirs = start_run(
        &daemon,
        &admin,
        json!({"workflow": "web", "inputs": {"environment": "prod"}}),
    );

    // Bad bodies name the field: 400 for a body not of the document's shape, 422 for inputs
    // that are of its shape but not what this workflow takes.
    let bad: &[(&str, u16, Option<&str>)] = &[
        ("not json", 400, None),
        ("[1]", 400, None),
        ("{}", 400, Some("workflow")),
        (r#"{"workflow": 3}"#, 400, Some("workflow")),
        (r#"{"workflow": "web", "input": {}}"#, 400, Some("input")),
        (r#"{"workflow": "web", "inputs": []}"#, 400, Some("inputs")),
        (
            r#"{"workflow": "web", "inputs": {"environment": "moon"}}"#,
            422,
            Some("inputs"),
        ),
        (
            r#"{"workflow": "web", "inputs": {"colour": "red"}}"#,
            422,
            Some("inputs"),
        ),
        (
            r#"{"workflow": "web", "dry_run": "yes"}"#,
            400,
            Some("dry_run"),
        ),
        (r#"{"workflow": "nope"}"#, 404, Some("workflow")),
    ];
    for (body, expected, field) in bad {
        let (status, answer) = call(&daemon, "POST", "/api/v1/runs", Some(&admin), Some(body));
        assert_eq!(status, *expected, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
        if let Some(field) = field {
            assert_eq!(answer["field"], *field, "{body}: {answer}");
        }
    }
    let huge =
        json!({"workflow": "web", "inputs": {"environment": "x".repeat(200_000)}}).to_string();
    assert_eq!(
        call(&daemon, "POST", "/api/v1/runs", Some(&admin), Some(&huge)).0,
        413
    );
    assert_eq!(
        call(&daemon, "PUT", "/api/v1/locks/k", Some(&admin), Some(&huge)).0,
        413
    );
    let (status, answer) = call(
        &daemon,
        "PUT",
        "/api/v1/locks/k",
        Some(&admin),
        Some(r#"{"reason": 1}"#),
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("reason")),
        "{answer}"
    );
    let (status, answer) = call(
        &daemon,
        "GET",
        "/api/v1/runs?status=odd",
        Some(&viewer),
        None,
    );
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("status")),
        "{answer}"
    );

    // A run's record: steps with status, timings, outputs and logs.
    let done = wait_run(&daemon, &viewer, &ours, terminal);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["principal"], "ci");
    let build = &done["steps"][0];
    assert_eq!(build["id"], "build");
    assert_eq!(build["status"], "succeeded");
    assert_eq!(build["outputs"]["artifact"], "web.tar");
    assert!(build["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(build["started_ms"].as_i64().unwrap() <= build["finished_ms"].as_i64().unwrap());
    assert!(
        build["logs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["message"] == "building for staging"),
        "{build}"
    );
    assert_eq!(done["steps"][1]["status"], "succeeded");
    assert_eq!(
        call(&daemon, "GET", "/api/v1/runs/nope", Some(&viewer), None).0,
        404
    );

    // The event stream: the same events as `shiphat run --json`, resumable.
    let events = sse(&daemon, &viewer, &ours, None);
    let kinds: Vec<&str> = events
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert_eq!(kinds.iter().filter(|k| **k == "step_finished").count(), 2);
    assert!(events.iter().all(|(_, e)| e["run_id"] == ours.as_str()));
    let local = dir.run(
        &WEB.replace("\"${{ inputs.sleep }}\"", "0"),
        &["--input", "environment=staging"],
    );
    let local_kinds: Vec<&str> = local
        .events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds, local_kinds,
        "the daemon streams what `shiphat run --json` prints"
    );
    let (third_id, _) = &events[2];
    let rest = sse(&daemon, &viewer, &ours, Some(third_id));
    assert_eq!(rest.len(), events.len() - 3);
    assert_eq!(rest[0].1, events[3].1);

    // Listing, filtering and paging.
    let (_, page) = call(
        &daemon,
        "GET",
        "/api/v1/runs?workflow=web&limit=1",
        Some(&viewer),
        None,
    );
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, page2) = call(
        &daemon,
        "GET",
        &format!("/api/v1/runs?workflow=web&limit=1&before={next}"),
        Some(&viewer),
        None,
    );
    assert_eq!(page2["runs"].as_array().unwrap().len(), 1);
    assert_ne!(page2["runs"][0]["id"], page["runs"][0]["id"]);
    let (_, ok) = call(
        &daemon,
        "GET",
        "/api/v1/runs?status=succeeded",
        Some(&viewer),
        None,
    );
    assert!(
        ok["runs"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "succeeded")
    );

    // Idempotency: a retried request returns the same run.
    let key = [("Idempotency-Key", "deploy-42")];
    let plain = json!({"workflow": "web"}).to_string();
    let (s1, first) = call_with(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&deployer),
        Some(&plain),
        &key,
    );
    let (s2, second) = call_with(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&deployer),
        Some(&plain),
        &key,
    );
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["created"], false);

    // Cancel: own runs as deployer, others' only as admin.
    let slow = start_run(
        &daemon,
        &deployer,
        json!({"workflow": "web", "inputs": {"sleep": 30000}}),
    );
    let (status, body) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{theirs}/cancel"),
        Some(&deployer),
        None,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("`admin`"),
        "{body}"
    );
    assert_eq!(
        call(
            &daemon,
            "POST",
            &format!("/api/v1/runs/{slow}/cancel"),
            Some(&viewer),
            None
        )
        .0,
        403
    );
    wait_run(&daemon, &viewer, &slow, |r| {
        r["steps"][1]["status"] == "running"
    });
    let (status, body) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{slow}/cancel"),
        Some(&deployer),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let cancelled = wait_run(&daemon, &viewer, &slow, terminal);
    assert_eq!(cancelled["status"], "cancelled");
    wait_run(&daemon, &viewer, &theirs, terminal);
    let (status, _) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{theirs}/cancel"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 409, "an ended run cannot be cancelled");
    let (status, body) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{ours}/resume"),
        Some(&deployer),
        None,
    );
    assert_eq!(status, 409, "only interrupted runs resume: {body}");
    assert_eq!(
        call(
            &daemon,
            "POST",
            "/api/v1/runs/nope/resume",
            Some(&admin),
            None
        )
        .0,
        404
    );

    // Locks: admins only; a held lock refuses runs on its key, unless an admin forces it.
    let lock = r#"{"reason": "release freeze", "expires_in": "1h"}"#;
    assert_eq!(
        call(
            &daemon,
            "PUT",
            "/api/v1/locks/web-staging",
            Some(&deployer),
            Some(lock)
        )
        .0,
        403
    );
    let (status, held) = call(
        &daemon,
        "PUT",
        "/api/v1/locks/web-staging",
        Some(&admin),
        Some(lock),
    );
    assert_eq!(status, 200, "{held}");
    assert_eq!(held["owner"], "root");
    assert!(held["expires_at"].is_string());
    let (status, got) = call(
        &daemon,
        "GET",
        "/api/v1/locks/web-staging",
        Some(&viewer),
        None,
    );
    assert_eq!(
        (status, got["reason"].as_str()),
        (200, Some("release freeze"))
    );
    let (_, all) = call(&daemon, "GET", "/api/v1/locks", Some(&viewer), None);
    assert_eq!(all["locks"].as_array().unwrap().len(), 1);
    let (status, refused) = call(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&deployer),
        Some(&plain),
    );
    assert_eq!(status, 409, "{refused}");
    let message = refused["error"].as_str().unwrap();
    assert!(
        message.contains("`root`") && message.contains("release freeze"),
        "{refused}"
    );
    let forced = json!({"workflow": "web", "force": true}).to_string();
    assert_eq!(
        call(
            &daemon,
            "POST",
            "/api/v1/runs",
            Some(&deployer),
            Some(&forced)
        )
        .0,
        403
    );
    let (status, answer) = call(&daemon, "POST", "/api/v1/runs", Some(&admin), Some(&forced));
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        call(
            &daemon,
            "DELETE",
            "/api/v1/locks/web-staging",
            Some(&deployer),
            None
        )
        .0,
        403
    );
    assert_eq!(
        call(
            &daemon,
            "DELETE",
            "/api/v1/locks/web-staging",
            Some(&admin),
            None
        )
        .0,
        204
    );
    assert_eq!(
        call(
            &daemon,
            "DELETE",
            "/api/v1/locks/web-staging",
            Some(&admin),
            None
        )
        .0,
        404
    );
    assert_eq!(
        call(
            &daemon,
            "GET",
            "/api/v1/locks/web-staging",
            Some(&viewer),
            None
        )
        .0,
        404
    );

    // The audit log: who, what, when, from where, and the outcome, refusals included.
    assert_eq!(
        call(&daemon, "GET", "/api/v1/audit", Some(&deployer), None).0,
        403
    );
    let (status, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    let find = |pred: &dyn Fn(&Value) -> bool| entries.iter().find(|e| pred(e)).cloned();
    let forced_entry = find(&|e| {
        e["outcome"]
            .as_str()
            .unwrap_or("")
            .contains("forced past the lock")
    })
    .expect("the forced run is audited");
    assert_eq!(forced_entry["principal"], "root");
    assert!(
        forced_entry["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(forced_entry["at"].is_string());
    assert!(
        find(&|e| e["status"] == 401
            && e["principal"].is_null()
            && e["action"] == "POST /api/v1/runs")
        .is_some()
    );
    assert!(find(&|e| e["status"] == 403 && e["principal"] == "eve").is_some());
    assert!(
        find(&|e| e["action"] == "DELETE /api/v1/locks/web-staging" && e["outcome"] == "unlocked")
            .is_some()
    );
    assert!(find(&|e| e["target"] == slow.as_str() && e["outcome"] == "cancelled").is_some());

    // Metrics in the Prometheus text format.
    let (status, metrics) = call(&daemon, "GET", "/metrics", None, None);
    assert_eq!(status, 200);
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains(r#"shiphat_runs_total{workflow="web",status="succeeded"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("shiphat_step_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("shiphat_queue_depth"), "{metrics}");

    // Every operation of the OpenAPI document exists (none answers 404 or 405).
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", &ours).replace("{key}", "some-key");
            let method = method.to_uppercase();
            if concrete.ends_with("/events") {
                continue; // read above; a stream
            }
            let body = if method == "PUT" {
                Some(r#"{"reason": "check"}"#)
            } else {
                Some("{}")
            };
            let (status, answer) = call(&daemon, &method, &concrete, Some(&admin), body);
            assert!(
                status != 405 && !(status == 404 && answer["error"] == "no such route"),
                "{method} {concrete}: {status} {answer}"
            );
        }
    }
}

#[test]
fn twenty_simultaneous_runs_of_one_concurrency_key_never_overlap() {
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let body =
        json!({"workflow": "web", "inputs": {"environment": "prod", "sleep": 20}}).to_string();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(20));
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..20)
            .map(|_| {
                let barrier = barrier.clone();
                let (daemon, admin, body) = (&daemon, &admin, &body);
                s.spawn(move || {
                    barrier.wait();
                    let (status, answer) =
                        call(daemon, "POST", "/api/v1/runs", Some(admin), Some(body));
                    assert_eq!(status, 202, "{answer}");
                    answer["id"].as_str().unwrap().to_owned()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // While they run, the queue is visible.
    let (_, queued) = call(
        &daemon,
        "GET",
        "/api/v1/runs?status=queued",
        Some(&admin),
        None,
    );
    let positions: Vec<i64> = queued["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["queue_position"].as_i64())
        .collect();
    assert!(positions.iter().all(|p| *p >= 1), "{queued}");
    let mut spans: Vec<(i64, i64)> = ids
        .iter()
        .map(|id| {
            let run = wait_run(&daemon, &admin, id, terminal);
            assert_eq!(run["status"], "succeeded", "{run}");
            assert_eq!(run["concurrency_key"], "web-prod");
            (
                run["started_ms"].as_i64().unwrap(),
                run["finished_ms"].as_i64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[0].1 <= pair[1].0,
            "runs overlapped: {pair:?} in {spans:?}"
        );
    }
    // With `queue: false`, a busy key refuses instead of queueing.
    let docs = r#"{"workflow": "docs"}"#;
    let first = call(&daemon, "POST", "/api/v1/runs", Some(&admin), Some(docs));
    assert_eq!(first.0, 202, "{}", first.1);
    let (status, refused) = call(&daemon, "POST", "/api/v1/runs", Some(&admin), Some(docs));
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("queue: false"),
        "{refused}"
    );
}

#[test]
fn the_cli_is_a_client_of_the_daemon() {
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let server = format!("http://{}", daemon.addr);
    let cli = |args: &[&str]| {
        let mut command: Command = dir.shiphat();
        command
            .args(args)
            .env("SHIPHAT_SERVER", &server)
            .env("SHIPHAT_TOKEN", &admin);
        support::Run::of(command)
    };
    // `run --server` prints the same JSON Lines as a local run.
    let remote = cli(&[
        "run",
        "--server",
        &server,
        "web",
        "--json",
        "--input",
        "environment=staging",
    ]);
    assert_eq!(remote.code, 0, "{}", remote.stderr);
    let local = dir.run(
        &WEB.replace("\"${{ inputs.sleep }}\"", "0"),
        &["--input", "environment=staging"],
    );
    let strip = |events: &[Value]| -> Vec<Value> {
        events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                for volatile in ["run_id", "time", "duration_ms"] {
                    e.as_object_mut().unwrap().remove(volatile);
                }
                e
            })
            .collect()
    };
    assert_eq!(strip(&remote.events), strip(&local.events));
    let id = remote.events[0]["run_id"].as_str().unwrap().to_owned();
    // `SHIPHAT_SERVER` alone makes `run` remote, as `--server` does.
    let by_env = cli(&["run", "web", "--json", "--input", "environment=staging"]);
    assert_eq!(by_env.code, 0, "{}", by_env.stderr);
    assert_eq!(strip(&by_env.events), strip(&local.events));
    let by_env_id = by_env.events[0]["run_id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(
            &daemon,
            "GET",
            &format!("/api/v1/runs/{by_env_id}"),
            Some(&admin),
            None
        )
        .0,
        200,
        "the run went to the daemon"
    );
    // The human view works remotely too, from a file naming the workflow.
    let file = dir.write("workflows/web.yaml", WEB);
    let human = cli(&["run", "--server", &server, file.to_str().unwrap()]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.contains("deploy"), "{}", human.stdout);
    // An empty `SHIPHAT_SERVER` runs here.
    let here = {
        let mut command: Command = dir.shiphat();
        command
            .args(["run", file.to_str().unwrap(), "--json"])
            .env("SHIPHAT_SERVER", "")
            .env("SHIPHAT_TOKEN", &admin);
        support::Run::of(command)
    };
    assert_eq!(here.code, 0, "{}", here.stderr);
    let here_id = here.events[0]["run_id"].as_str().unwrap();
    assert_eq!(
        call(
            &daemon,
            "GET",
            &format!("/api/v1/runs/{here_id}"),
            Some(&admin),
            None
        )
        .0,
        404,
        "the run stayed local"
    );

    let list = cli(&["runs", "list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains(&id), "{}", list.stdout);
    let show = cli(&["runs", "show", &id]);
    assert!(
        show.stdout.contains("build") && show.stdout.contains("succeeded"),
        "{}",
        show.stdout
    );
    let logs = cli(&["runs", "logs", &id, "--json"]);
    assert_eq!(strip(&logs.events), strip(&remote.events));

    let lock = cli(&["lock", "web-staging", "--reason", "freeze"]);
    assert_eq!(lock.code, 0, "{}", lock.stderr);
    let refused = cli(&["run", "--server", &server, "web", "--json"]);
    assert_eq!(refused.code, 2, "a refused run is the user's to fix");
    assert!(refused.stderr.contains("freeze"), "{}", refused.stderr);
    assert_eq!(cli(&["unlock", "web-staging"]).code, 0);
    assert_eq!(cli(&["run", "--server", &server, "web", "--json"]).code, 0);

    let slow = start_run(
        &daemon,
        &admin,
        json!({"workflow": "web", "inputs": {"sleep": 30000}}),
    );
    wait_run(&daemon, &admin, &slow, |r| r["status"] == "running");
    let cancel = cli(&["runs", "cancel", &slow]);
    assert_eq!(cancel.code, 0, "{}", cancel.stderr);
    assert_eq!(
        wait_run(&daemon, &admin, &slow, terminal)["status"],
        "cancelled"
    );
    let resume = cli(&["runs", "resume", &slow]);
    assert_eq!(resume.code, 2, "a cancelled run does not resume");
    let anonymous = {
        let mut command: Command = dir.shiphat();
        command
            .args(["runs", "list"])
            .env("SHIPHAT_SERVER", &server)
            .env_remove("SHIPHAT_TOKEN");
        support::Run::of(command)
    };
    assert_eq!(anonymous.code, 2);
    assert!(anonymous.stderr.contains("401"), "{}", anonymous.stderr);
}

#[test]
fn an_invalid_workflow_is_skipped_and_the_last_good_one_stays() {
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let names = || -> Vec<String> {
        let (_, list) = call(&daemon, "GET", "/api/v1/workflows", Some(&admin), None);
        list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let wait_for = |pred: &dyn Fn(&[String]) -> bool| {
        let started = Instant::now();
        loop {
            let now = names();
            if pred(&now) {
                return now;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "workflows never changed: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // A new file is picked up.
    dir.write(
        "workflows/extra.yaml",
        "name: extra\nsteps:\n  - id: a\n    uses: noop\n",
    );
    wait_for(&|n| n.iter().any(|w| w == "extra"));
    // Breaking it keeps the last good version in service.
    dir.write(
        "workflows/extra.yaml",
        "name: extra\nsteps:\n  - id: a\n    uses: noop\n    bogus: 1\n",
    );
    let id = start_run(&daemon, &admin, json!({"workflow": "extra"}));
    assert_eq!(
        wait_run(&daemon, &admin, &id, terminal)["status"],
        "succeeded"
    );
    let warned = daemon.wait_for_stderr("skipping", DEADLINE);
    assert!(
        warned.contains("bogus") && warned.contains("stays in service"),
        "{warned}"
    );
    assert!(names().iter().any(|w| w == "extra"));
    // Deleting the file takes the workflow out of service.
    std::fs::remove_file(dir.path().join("workflows/extra.yaml")).unwrap();
    wait_for(&|n| !n.iter().any(|w| w == "extra"));
}

#[test]
fn sigterm_records_unfinished_runs_as_interrupted() {
    let dir = TestDir::new();
    setup(&dir);
    let config = dir.write(
        "shiphat.toml",
        "shutdown_grace = \"200ms\"\nworkflows = [\"workflows\"]\ndata_dir = \"data\"\n",
    );
    let admin = token(&dir, "root", "admin", &[]);
    let mut daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let id = start_run(
        &daemon,
        &admin,
        json!({"workflow": "web", "inputs": {"sleep": 30000}}),
    );
    wait_run(&daemon, &admin, &id, |r| {
        r["steps"][1]["status"] == "running"
    });
    // SAFETY: the pid is our own live child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let run = wait_run(&daemon, &admin, &id, |_| true);
    assert_eq!(run["status"], "interrupted", "{run}");
    assert!(
        run["detail"].as_str().unwrap().contains("`deploy`"),
        "{run}"
    );
    assert_eq!(run["steps"][0]["status"], "succeeded");
    assert_eq!(run["steps"][1]["status"], "interrupted");
    // A person resumes it: it goes on from the step in flight; `build` does not run again.
    let (status, _) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{id}/resume"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 202);
    wait_run(&daemon, &admin, &id, |r| r["status"] == "running");
    call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&admin),
        None,
    );
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "cancelled");
    assert_eq!(run["steps"][0]["attempts"], 1);
    // Cancelling a running run records who did it, after what came before.
    assert_eq!(
        run["detail"], "interrupted during step `deploy`; resumed by `root`; cancelled by `root`",
        "{run}"
    );
    // The resumed run's history has one `run_started`: the runner's second one is dropped.
    let events = sse(&daemon, &admin, &id, None);
    let kinds = events
        .iter()
        .map(|(_, e)| e["event"].as_str().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(
        kinds.iter().filter(|k| **k == "run_started").count(),
        1,
        "{kinds:?}"
    );
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    // `deploy` started twice (before the shutdown and after the resume), `build` once.
    let starts = |step: &str| {
        events
            .iter()
            .filter(|(_, e)| e["event"] == "step_started" && e["step"] == step)
            .count()
    };
    assert_eq!((starts("build"), starts("deploy")), (1, 2), "{kinds:?}");
}

#[test]
fn admins_manage_tokens_over_the_api() {
    let dir = TestDir::new();
    setup(&dir);
    let config = dir.write(
        "shiphat.toml",
        format!(
            "workflows = [\"workflows\"]\ndata_dir = \"data\"\n\n[[principals]]\nname = \"file-ci\"\nroles = [\"viewer\"]\ntoken_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ),
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);

    // Minted once, answered once.
    let (status, minted) = call(
        &daemon,
        "POST",
        "/api/v1/tokens",
        Some(&admin),
        Some(r#"{"name": "ci", "roles": ["deployer"], "patterns": ["web/staging"]}"#),
    );
    assert_eq!(status, 201, "{minted}");
    let secret = minted["token"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "{minted}");
    assert_eq!(minted["roles"], json!(["deployer"]));
    // It works at once, with its role and patterns.
    let ours = start_run(
        &daemon,
        &secret,
        json!({"workflow": "web", "inputs": {"environment": "staging"}}),
    );
    let (status, _) = call(
        &daemon,
        "POST",
        "/api/v1/runs",
        Some(&secret),
        Some(r#"{"workflow": "docs"}"#),
    );
    assert_eq!(status, 403);

    // Listed without secrets, with those of the config file.
    let (status, list) = call(&daemon, "GET", "/api/v1/tokens", Some(&admin), None);
    assert_eq!(status, 200);
    let names = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap(), t["source"].as_str().unwrap()))
        .collect::<Vec<_>>();
    assert_eq!(
        names,
        [
            ("ci", "database"),
            ("root", "database"),
            ("file-ci", "config")
        ]
    );
    assert!(!list.to_string().contains(&secret));

    // Bad bodies name the field; names are unique.
    for (body, expected, field) in [
        (r#"{"roles": ["viewer"]}"#, 400, "name"),
        (r#"{"name": "a"}"#, 400, "roles"),
        (r#"{"name": "a", "roles": ["god"]}"#, 400, "roles"),
        (r#"{"name": "a", "roles": "viewer"}"#, 400, "roles"),
        (
            r#"{"name": "a", "roles": ["viewer"], "patterns": ["a,b"]}"#,
            400,
            "patterns",
        ),
        (
            r#"{"name": "a", "roles": ["viewer"], "colour": 1}"#,
            400,
            "colour",
        ),
        (r#"{"name": "ci", "roles": ["viewer"]}"#, 409, "name"),
        (r#"{"name": "file-ci", "roles": ["viewer"]}"#, 409, "name"),
    ] {
        let (status, answer) = call(&daemon, "POST", "/api/v1/tokens", Some(&admin), Some(body));
        assert_eq!(
            (status, answer["field"].as_str()),
            (expected, Some(field)),
            "{body}: {answer}"
        );
    }

    // Revoked at once; config tokens are the file's.
    assert_eq!(
        call(&daemon, "DELETE", "/api/v1/tokens/ci", Some(&admin), None).0,
        204
    );
    let (status, _) = call(
        &daemon,
        "GET",
        &format!("/api/v1/runs/{ours}"),
        Some(&secret),
        None,
    );
    assert_eq!(status, 401);
    assert_eq!(
        call(&daemon, "DELETE", "/api/v1/tokens/ci", Some(&admin), None).0,
        404
    );
    let (status, answer) = call(
        &daemon,
        "DELETE",
        "/api/v1/tokens/file-ci",
        Some(&admin),
        None,
    );
    assert_eq!(status, 409, "{answer}");

    // Audited, by name, never with the secret.
    let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    assert!(!audit.to_string().contains(&secret));
    let entries = audit["entries"].as_array().unwrap();
    let find = |action: &str, status: u16| {
        entries
            .iter()
            .find(|e| e["action"] == action && e["status"] == status)
            .unwrap_or_else(|| panic!("no `{action}` {status} in {audit}"))
    };
    let created = find("POST /api/v1/tokens", 201);
    assert_eq!(created["principal"], "root");
    assert_eq!(created["target"], "ci");
    assert_eq!(created["outcome"], "created token `ci` (deployer)");
    assert_eq!(
        find("DELETE /api/v1/tokens/ci", 204)["outcome"],
        "token deleted"
    );
    find("POST /api/v1/tokens", 409);
    find("DELETE /api/v1/tokens/file-ci", 409);
}

// Crash recovery: the real `shiphat serve` is killed with SIGKILL again and again, at
// different moments of its runs (before, during and after steps), and restarted each time.
// Then no run may be lost, stuck `running`, or have a step recorded complete twice, and the
// database must pass SQLite's own integrity check.

/// At least 20 kills, as the issue asks; 24 spreads them evenly over the four moments.
const KILLS: usize = 24;

/// Resumes by itself after a crash: every step is idempotent.
const AUTO: &str = r#"
name: auto
resume: auto
steps:
  - id: one
    uses: echo
    idempotent: true
    with: { message: one, sleep_ms: 30, outputs: { n: 1 } }
  - id: two
    uses: echo
    idempotent: true
    needs: one
    with: { message: "two after ${{ steps.one.outputs.n }}", sleep_ms: 30 }
  - id: three
    uses: echo
    idempotent: true
    needs: two
    with: { message: three, sleep_ms: 30 }
"#;

/// Waits for a person after a crash.
const MANUAL: &str = r#"
name: manual
concurrency: manual
steps:
  - id: a
    uses: echo
    with: { message: a, sleep_ms: 25 }
  - id: b
    uses: echo
    needs: a
    with: { message: b, sleep_ms: 25 }
finally:
  - id: cleanup
    uses: noop
"#;

/// The moments at which the daemon is killed.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// Right after the run was accepted, before any step.
    Accepted,
    /// While a step runs.
    DuringStep,
    /// Just after a step finished.
    AfterStep,
    /// After the run ended.
    AfterRun,
}

fn get(daemon: &Daemon, token: &str, id: &str) -> Value {
    let (status, run) = call(
        daemon,
        "GET",
        &format!("/api/v1/runs/{id}"),
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{run}");
    run
}

fn reached(run: &Value, moment: Moment) -> bool {
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    match moment {
        Moment::Accepted => true,
        Moment::DuringStep => steps.iter().any(|s| s["status"] == "running"),
        Moment::AfterStep => steps.iter().any(|s| s["status"] == "succeeded"),
        Moment::AfterRun => matches!(
            run["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ),
    }
}

#[test]
fn twenty_four_sigkills_lose_nothing() {
    let dir = TestDir::new();
    dir.write("workflows/auto.yaml", AUTO);
    dir.write("workflows/manual.yaml", MANUAL);
    let admin = token(&dir, "root", "admin", &[]);
    let moments = [
        Moment::Accepted,
        Moment::DuringStep,
        Moment::AfterStep,
        Moment::AfterRun,
    ];
    let mut ids = Vec::new();
    let mut hits: HashMap<String, usize> = HashMap::new();
    for kill in 0..KILLS {
        let mut daemon = start(&dir, &[]);
        // Some of the manual runs left interrupted by earlier kills get a person's attention.
        let (_, waiting) = call(
            &daemon,
            "GET",
            "/api/v1/runs?status=interrupted",
            Some(&admin),
            None,
        );
        for (i, run) in waiting["runs"].as_array().unwrap().iter().enumerate() {
            let id = run["id"].as_str().unwrap();
            let action = if (kill + i) % 2 == 0 {
                "resume"
            } else {
                "cancel"
            };
            let (status, body) = call(
                &daemon,
                "POST",
                &format!("/api/v1/runs/{id}/{action}"),
                Some(&admin),
                None,
            );
            assert_eq!(status, 202, "{action} {id}: {body}");
        }
        let workflow = if kill % 3 == 2 { "manual" } else { "auto" };
        let (status, answer) = call(
            &daemon,
            "POST",
            "/api/v1/runs",
            Some(&admin),
            Some(&json!({"workflow": workflow}).to_string()),
        );
        assert_eq!(status, 202, "{answer}");
        let id = answer["id"].as_str().unwrap().to_owned();
        ids.push(id.clone());
        let moment = moments[kill % moments.len()];
        let started = Instant::now();
        loop {
            let run = get(&daemon, &admin, &id);
            if reached(&run, moment) {
                *hits.entry(format!("{moment:?}")).or_default() += 1;
                break;
            }
            // A queued manual run behind an earlier one may end up past the moment we wanted;
            // killing it then is still a kill at some moment.
            if started.elapsed() > DEADLINE || run["status"] == "succeeded" {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        daemon.child.kill().unwrap();
        daemon.child.wait().unwrap();
    }
    assert!(
        hits.len() >= 3,
        "the kills did not hit different moments: {hits:?}"
    );

    // A last life: interrupted manual runs are cancelled, auto ones finish by themselves.
    let daemon = start(&dir, &[]);
    let started = Instant::now();
    loop {
        let (_, waiting) = call(
            &daemon,
            "GET",
            "/api/v1/runs?status=interrupted",
            Some(&admin),
            None,
        );
        for run in waiting["runs"].as_array().unwrap() {
            assert_eq!(
                run["workflow"], "manual",
                "auto runs resume by themselves: {run}"
            );
            let id = run["id"].as_str().unwrap();
            call(
                &daemon,
                "POST",
                &format!("/api/v1/runs/{id}/cancel"),
                Some(&admin),
                None,
            );
        }
        let (_, all) = call(&daemon, "GET", "/api/v1/runs?limit=500", Some(&admin), None);
        let busy: Vec<&Value> = all["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                !matches!(
                    r["status"].as_str(),
                    Some("succeeded" | "failed" | "cancelled")
                )
            })
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "runs never settled: {busy:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(daemon);

    let store = SqliteStore::open(&dir.path().join("data/shiphat.sqlite")).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert!(
        store
            .runs_with_status(RunStatus::Running)
            .unwrap()
            .is_empty()
    );
    for id in &ids {
        let run = store
            .run(id)
            .unwrap()
            .unwrap_or_else(|| panic!("run {id} was lost"));
        assert!(run.status.is_terminal(), "{run:?}");
        let steps = store.steps(id).unwrap();
        assert!(steps.iter().all(|s| s.status != "running"), "{steps:?}");
        let finished = steps_finished_once(&store, id);
        if run.status == RunStatus::Succeeded {
            assert!(steps.iter().all(|s| s.status == "succeeded"), "{steps:?}");
            // `auto` has three steps; `manual` two and a `finally`.
            assert_eq!(finished.len(), 3, "{id}: {finished:?}");
        }
    }
}

/// The steps of run `id` whose end its events record, each checked to be recorded once.
fn steps_finished_once(store: &dyn Store, id: &str) -> HashMap<String, usize> {
    let mut finished: HashMap<String, usize> = HashMap::new();
    for (_, body) in store.events(id, 0, 100_000).unwrap() {
        let event: Value = serde_json::from_str(&body).unwrap();
        if event["event"] == "step_finished" {
            *finished
                .entry(event["step"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
    }
    assert!(
        finished.values().all(|&n| n == 1),
        "a step of {id} was recorded complete twice: {finished:?}"
    );
    finished
}

/// The CLI as a client of `daemon`, with `token`.
fn client(dir: &TestDir, daemon: &Daemon, token: &str, args: &[&str]) -> Command {
    let mut command = dir.shiphat();
    command
        .args(args)
        .args(["--server", &daemon.url("")])
        .env("SHIPHAT_TOKEN", token);
    command
}

const GUARDED: &str = r#"
name: guarded
inputs:
  rollback_ms: { type: number, default: 0 }
steps:
  - id: verify
    uses: echo
    with: { message: verifying, sleep_ms: 60000 }
on_failure:
  - id: rollback
    uses: echo
    with: { message: rolling back, sleep_ms: "${{ inputs.rollback_ms }}" }
finally:
  - id: notify
    uses: echo
"#;

fn step_of<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {run}"))
}

/// Regression: a daemon cancel skipped `on_failure` and `finally`. The first cancel ends the
/// running step and runs the safety net; a second one aborts it.
#[test]
fn a_cancel_runs_the_safety_net_and_a_second_one_aborts_it() {
    let dir = TestDir::new();
    dir.write("workflows/guarded.yaml", GUARDED);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let cancel = |id: &str| {
        let (status, body) = call(
            &daemon,
            "POST",
            &format!("/api/v1/runs/{id}/cancel"),
            Some(&admin),
            None,
        );
        assert_eq!(status, 202, "{body}");
    };

    let id = start_run(&daemon, &admin, json!({"workflow": "guarded"}));
    wait_run(&daemon, &admin, &id, |r| {
        r["steps"][0]["status"] == "running"
    });
    cancel(&id);
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(step_of(&run, "verify")["status"], "cancelled");
    assert_eq!(step_of(&run, "rollback")["status"], "succeeded", "{run}");
    assert_eq!(step_of(&run, "notify")["status"], "succeeded", "{run}");

    let id = start_run(
        &daemon,
        &admin,
        json!({"workflow": "guarded", "inputs": {"rollback_ms": 60000}}),
    );
    wait_run(&daemon, &admin, &id, |r| {
        r["steps"][0]["status"] == "running"
    });
    cancel(&id);
    wait_run(&daemon, &admin, &id, |r| {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == "rollback" && s["status"] == "running")
    });
    let aborted = Instant::now();
    cancel(&id);
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert!(
        aborted.elapsed() < Duration::from_secs(30),
        "an abort is prompt"
    );
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(step_of(&run, "rollback")["status"], "cancelled", "{run}");
    assert_eq!(step_of(&run, "notify")["status"], "cancelled", "{run}");
}

/// Regression: the `--server` client panicked on a closed stdout.
#[test]
fn the_client_survives_a_closed_stdout() {
    let dir = TestDir::new();
    dir.write("workflows/web.yaml", WEB);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let run = |args: &[&str]| {
        support::run_with_closed_output(client(&dir, &daemon, &admin, args), true, false)
    };
    // Regression: an empty list printed nothing at all.
    let (code, stderr) = run(&["runs", "list"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("no runs"), "{stderr}");
    let (code, stderr) = run(&["run", "web", "--json"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, 0, "{stderr}");
    let (code, stderr) = run(&["runs", "list"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(code, 0, "{stderr}");
}

/// Regression: `shiphat lock` with a key no workflow uses said nothing, and there was no way
/// to list the locks.
#[test]
fn lock_warns_about_a_key_nothing_uses_and_locks_lists_them() {
    let dir = TestDir::new();
    dir.write("workflows/web.yaml", WEB);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let cli = |args: &[&str]| support::Run::of(client(&dir, &daemon, &admin, args));
    let none = cli(&["locks"]);
    assert_eq!(none.code, 0, "{}", none.stderr);
    assert!(none.stderr.contains("no locks"), "{}", none.stderr);
    let used = cli(&["lock", "web-prod", "--reason", "freeze"]);
    assert_eq!(used.code, 0, "{}", used.stderr);
    assert!(!used.stderr.contains("warning"), "{}", used.stderr);
    let typo = cli(&["lock", "wbe-prod", "--reason", "freeze"]);
    assert_eq!(typo.code, 0, "{}", typo.stderr);
    assert!(
        typo.stderr
            .contains("no workflow on this daemon uses the key `wbe-prod`")
            && typo
                .stderr
                .contains("`web-${{ inputs.environment }}` (web)"),
        "{}",
        typo.stderr
    );
    let listed = cli(&["locks"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed.stdout.contains("web-prod") && listed.stdout.contains("wbe-prod"),
        "{}",
        listed.stdout
    );
}

/// `shiphat token create` with its output, without asserting that it succeeded.
fn token_create(dir: &TestDir, args: &[&str]) -> std::process::Output {
    let mut command = dir.shiphat();
    command
        .args(["token", "create"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    command.output().unwrap()
}

#[test]
fn a_second_principal_of_the_same_name_is_refused() {
    // `shiphat token create ci` twice made two principals `ci`; either could cancel the
    // other's runs, since runs belong to a principal by name.
    let dir = TestDir::new();
    setup(&dir);
    let first = token(&dir, "ci", "deployer", &["web/staging"]);
    let again = token_create(&dir, &["ci", "--role", "admin"]);
    assert_eq!(again.status.code(), Some(2), "{again:?}");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("a token named `ci` exists") && stderr.contains("shiphat token delete ci"),
        "{stderr}"
    );
    assert!(again.stdout.is_empty(), "no second token is printed");

    // A config principal's name is taken too, by the CLI and by the API.
    let config = dir.write(
        "shiphat.toml",
        format!(
            "workflows = [\"workflows\"]\ndata_dir = \"data\"\n\n[[principals]]\nname = \"ops\"\nroles = [\"admin\"]\ntoken_sha256 = \"{}\"\n",
            "ab".repeat(32)
        ),
    );
    let mut command = dir.shiphat();
    command
        .args(["token", "create", "ops", "--role", "admin", "--config"])
        .arg(&config);
    let taken = command.output().unwrap();
    assert_eq!(taken.status.code(), Some(2), "{taken:?}");
    assert!(
        String::from_utf8_lossy(&taken.stderr).contains("`ops` is a principal of the config file"),
        "{taken:?}"
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    for name in ["ci", "ops"] {
        let (status, answer) = call(
            &daemon,
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            Some(&json!({"name": name, "roles": ["admin"]}).to_string()),
        );
        assert_eq!(status, 409, "{name}: {answer}");
        assert_eq!(answer["field"], "name", "{answer}");
    }
    // The first `ci` is untouched and still the only one.
    start_run(
        &daemon,
        &first,
        json!({"workflow": "web", "inputs": {"environment": "staging"}}),
    );
    let (_, list) = call(&daemon, "GET", "/api/v1/tokens", Some(&admin), None);
    let cis = list["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "ci")
        .count();
    assert_eq!(cis, 1, "{list}");
    drop(daemon);

    // `token delete` frees the name.
    let mut command = dir.shiphat();
    command
        .args(["token", "delete", "ci", "--data-dir"])
        .arg(dir.path().join("data"));
    let deleted = command.output().unwrap();
    assert!(deleted.status.success(), "{deleted:?}");
    token(&dir, "ci", "viewer", &[]);

    // Made without the config file, a token can take a config principal's name: the daemon
    // with that config then refuses to start rather than let both act as `ops`.
    token(&dir, "ops", "viewer", &[]);
    let mut command = dir.shiphat();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the daemon started with two principals named `ops`");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("two principals are named `ops`"),
        "{stderr}"
    );
}

/// SIGTERMs the daemon and waits for it to exit.
fn stop(daemon: &mut Daemon) {
    // SAFETY: the pid is our own live child.
    unsafe { libc::kill(daemon.child.id() as i32, libc::SIGTERM) };
    let started = Instant::now();
    while daemon.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < DEADLINE,
            "the daemon did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_lock_holds_queued_runs_and_resumes_until_an_admin_forces_them() {
    // A lock refused new runs only: a run queued before it and the resume of an interrupted
    // run started under it, and starting a resumed run wiped its `resumed by` detail.
    let dir = TestDir::new();
    setup(&dir);
    let config = dir.write(
        "shiphat.toml",
        "shutdown_grace = \"200ms\"\nworkflows = [\"workflows\"]\ndata_dir = \"data\"\n",
    );
    let config = config.to_str().unwrap();
    let admin = token(&dir, "root", "admin", &[]);
    let ci = token(&dir, "ci", "deployer", &["web/*"]);
    let mut daemon = start(&dir, &["--config", config]);
    // An interrupted run of `web-prod`: stopped during its step.
    let slow =
        |env: &str| json!({"workflow": "web", "inputs": {"environment": env, "sleep": 30000}});
    let interrupted = start_run(&daemon, &ci, slow("prod"));
    wait_run(&daemon, &ci, &interrupted, |r| {
        r["steps"][1]["status"] == "running"
    });
    stop(&mut daemon);
    let daemon = start(&dir, &["--config", config]);
    // A run of `web-staging` in progress, and one queued behind it.
    let running = start_run(&daemon, &ci, slow("staging"));
    wait_run(&daemon, &ci, &running, |r| r["status"] == "running");
    let queued = start_run(
        &daemon,
        &ci,
        json!({"workflow": "web", "inputs": {"environment": "staging"}}),
    );
    for key in ["web-staging", "web-prod"] {
        let (status, body) = call(
            &daemon,
            "PUT",
            &format!("/api/v1/locks/{key}"),
            Some(&admin),
            Some(r#"{"reason": "release freeze"}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    // The key comes free, but the lock holds the queued run: queued, the lock named.
    call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{running}/cancel"),
        Some(&admin),
        None,
    );
    let held = wait_run(&daemon, &ci, &queued, |r| {
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("held by the lock"))
    });
    assert_eq!(held["status"], "queued", "{held}");
    assert_eq!(
        held["detail"],
        "held by the lock on `web-staging` of `root`: release freeze"
    );
    assert_eq!(get(&daemon, &admin, &running)["status"], "cancelled");

    // A resume under a lock needs an admin's force.
    let resume = |token: &str, body: Option<&str>| {
        call(
            &daemon,
            "POST",
            &format!("/api/v1/runs/{interrupted}/resume"),
            Some(token),
            body,
        )
    };
    let (status, refused) = resume(&ci, None);
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["lock"]["key"], "web-prod", "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("`{\"force\": true}`"),
        "{refused}"
    );
    assert_eq!(resume(&ci, Some(r#"{"force": true}"#)).0, 403);
    assert_eq!(resume(&admin, None).0, 409);
    assert_eq!(get(&daemon, &admin, &interrupted)["status"], "interrupted");
    let (status, body) = resume(&admin, Some(r#"{"force": true}"#));
    assert_eq!(status, 202, "{body}");
    // It runs, and starting it kept who resumed it and why.
    let run = wait_run(&daemon, &admin, &interrupted, |r| r["status"] == "running");
    let detail = run["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("interrupted during step `deploy`"),
        "{detail}"
    );
    assert!(
        detail.contains("resumed by `root`, forced past the lock on `web-prod` of `root`"),
        "{detail}"
    );
    call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{interrupted}/cancel"),
        Some(&admin),
        None,
    );
    let run = wait_run(&daemon, &admin, &interrupted, terminal);
    let detail = run["detail"].as_str().unwrap();
    assert!(
        detail.contains("resumed by `root`") && detail.ends_with("cancelled by `root`"),
        "{detail}"
    );
    let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    let forced = audit["entries"].as_array().unwrap().iter().any(|e| {
        e["target"] == interrupted.as_str()
            && e["outcome"] == "resumed, forced past the lock on `web-prod` held by `root`"
    });
    assert!(forced, "{audit:#}");

    // Lifting the lock starts the held run.
    let (status, _) = call(
        &daemon,
        "DELETE",
        "/api/v1/locks/web-staging",
        Some(&admin),
        None,
    );
    assert_eq!(status, 204);
    let run = wait_run(&daemon, &ci, &queued, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
}

#[test]
fn an_idempotency_key_reused_with_another_body_is_refused_with_the_first_run() {
    // A key reused for a different request quietly answered with the first run, as if the
    // second deploy had been started.
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let post = |body: &str, key: &str| {
        call_with(
            &daemon,
            "POST",
            "/api/v1/runs",
            Some(&admin),
            Some(body),
            &[("Idempotency-Key", key)],
        )
    };
    let staging = r#"{"workflow": "web", "inputs": {"environment": "staging"}}"#;
    let (status, first) = post(staging, "deploy-42");
    assert_eq!(status, 202, "{first}");
    let (status, again) = post(staging, "deploy-42");
    assert_eq!((status, &again["created"]), (202, &json!(false)), "{again}");
    assert_eq!(again["id"], first["id"]);
    for other in [
        r#"{"workflow": "web", "inputs": {"environment": "prod"}}"#,
        r#"{"workflow": "web", "inputs": {"environment": "staging"}, "dry_run": true}"#,
        r#"{"workflow": "docs"}"#,
    ] {
        let (status, refused) = post(other, "deploy-42");
        assert_eq!(status, 422, "{other}: {refused}");
        assert_eq!(refused["run"], first["id"], "{refused}");
        let id = first["id"].as_str().unwrap();
        assert!(refused["error"].as_str().unwrap().contains(id), "{refused}");
    }
    let (status, _) = post(staging, &"k".repeat(256));
    assert_eq!(status, 400, "a key longer than 255 is refused");
    let (_, list) = call(&daemon, "GET", "/api/v1/runs", Some(&admin), None);
    assert_eq!(list["runs"].as_array().unwrap().len(), 1, "{list}");
}

#[test]
fn event_streams_are_capped_per_principal() {
    // One principal could open event streams without end, each holding a task and a socket.
    let dir = TestDir::new();
    setup(&dir);
    let ci = token(&dir, "ci", "viewer", &[]);
    let other = token(&dir, "eve", "viewer", &[]);
    let daemon = start(&dir, &[]);
    let open = |token: &str| {
        agent()
            .get(&daemon.url("/api/v1/events"))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .unwrap()
    };
    let mut streams = (0..32).map(|_| open(&ci)).collect::<Vec<_>>();
    assert!(streams.iter().all(|s| s.status() == 200));
    let refused = open(&ci);
    assert_eq!(refused.status(), 429);
    // Another principal has its own.
    assert_eq!(open(&other).status(), 200);
    // A stream closed is given back.
    streams.pop();
    let started = Instant::now();
    loop {
        let again = open(&ci);
        if again.status() == 200 {
            break;
        }
        assert_eq!(again.status(), 429);
        assert!(
            started.elapsed() < DEADLINE,
            "the closed stream was never given back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(unix)]
#[test]
fn the_data_directory_and_database_are_created_private() {
    // They were created with the umask's modes (0755 and 0644): anyone on the machine could
    // read the runs' inputs, outputs and logs.
    use std::os::unix::fs::PermissionsExt;
    let dir = TestDir::new();
    token(&dir, "root", "admin", &[]);
    let mode = |name: &str| {
        std::fs::metadata(dir.path().join(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("data"), 0o700);
    assert_eq!(mode("data/shiphat.sqlite"), 0o600);
}

/// The bytes of the database and its write-ahead log.
fn database_bytes(dir: &TestDir) -> u64 {
    ["shiphat.sqlite", "shiphat.sqlite-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.path().join("data").join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn a_flood_of_refused_calls_cannot_fill_the_audit_log() {
    // 300 unauthenticated requests with 60 KB paths grew the database by more than 20 MB:
    // every refusal was stored whole.
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let before = database_bytes(&dir);
    let path = format!("/api/v1/runs/{}/cancel", "a".repeat(60_000));
    for _ in 0..300 {
        let (status, _) = call(&daemon, "POST", &path, None, None);
        assert_eq!(status, 401);
    }
    let grown = database_bytes(&dir).saturating_sub(before);
    assert!(
        grown < 2 * 1024 * 1024,
        "the database grew by {grown} bytes"
    );
    let (status, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().unwrap();
    let refused = entries
        .iter()
        .filter(|e| e["status"] == 401)
        .collect::<Vec<_>>();
    assert!(
        (20..300).contains(&refused.len()),
        "the first refusals are logged one by one, the flood is not: {}",
        refused.len()
    );
    for entry in &refused {
        let action = entry["action"].as_str().unwrap();
        assert!(
            action.len() < 1100 && action.ends_with("more bytes)"),
            "{}",
            action.len()
        );
    }
    // The next refusal logged says how many were not.
    let started = Instant::now();
    loop {
        call(&daemon, "POST", "/api/v1/runs", None, None);
        let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
        let merged = audit["entries"][0]["outcome"]
            .as_str()
            .is_some_and(|o| o.contains("refused calls from this address before it"));
        if merged {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "{audit:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Signs in with `token`; returns the status and the session cookie (`name=value`).
fn sign_in(daemon: &Daemon, token: &str) -> (u16, Option<String>) {
    let body = json!({ "token": token }).to_string();
    let (status, headers, _) = daemon.call(
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        Some(&body),
    );
    let cookie = headers
        .get("set-cookie")
        .and_then(|c| c.split(';').next())
        .map(str::to_owned);
    (status, cookie)
}

/// Whether a session cookie is still signed in.
fn signed_in(daemon: &Daemon, cookie: &str) -> bool {
    let (status, _, _) = daemon.call("GET", "/api/v1/session", &[("Cookie", cookie)], None);
    status == 200
}

#[test]
fn sign_ins_with_one_token_never_sign_out_another_and_guessing_is_throttled() {
    // Sessions were capped for all tokens together, the oldest evicted first: signing in
    // again and again with one token signed everyone else out. Nothing slowed guessing.
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let ci = token(&dir, "ci", "viewer", &[]);
    let daemon = start(&dir, &[]);
    let (status, theirs) = sign_in(&daemon, &admin);
    assert_eq!(status, 200);
    let theirs = theirs.unwrap();
    let (_, first) = sign_in(&daemon, &ci);
    let first = first.unwrap();
    for _ in 0..40 {
        assert_eq!(sign_in(&daemon, &ci).0, 200);
    }
    assert!(
        signed_in(&daemon, &theirs),
        "another token's session was ended"
    );
    assert!(
        !signed_in(&daemon, &first),
        "the token's own oldest session makes room"
    );

    // Wrong tokens: a few are answered, then the address waits, right tokens included.
    for _ in 0..10 {
        assert_eq!(sign_in(&daemon, "guess").0, 401);
    }
    let (status, headers, body) = daemon.call(
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        Some(&json!({ "token": "guess" }).to_string()),
    );
    assert_eq!(status, 429, "{body}");
    assert!(headers.get("retry-after").is_some());
    assert_eq!(sign_in(&daemon, &admin).0, 429);
    assert!(
        signed_in(&daemon, &theirs),
        "a signed-in session is not throttled"
    );
}

#[test]
fn one_principal_cannot_queue_runs_without_end() {
    // A principal could queue runs without bound, each a row on disk and an entry in memory.
    let dir = TestDir::new();
    setup(&dir);
    let config = dir.write(
        "shiphat.toml",
        "max_queued_per_principal = 3\nworkflows = [\"workflows\"]\ndata_dir = \"data\"\n",
    );
    let admin = token(&dir, "root", "admin", &[]);
    let ci = token(&dir, "ci", "deployer", &["web/*"]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let run = |token: &str, sleep: u32| {
        call(
            &daemon,
            "POST",
            "/api/v1/runs",
            Some(token),
            Some(&json!({"workflow": "web", "inputs": {"sleep": sleep}}).to_string()),
        )
    };
    let (_, running) = run(&ci, 30000);
    let running = running["id"].as_str().unwrap().to_owned();
    wait_run(&daemon, &ci, &running, |r| r["status"] == "running");
    let queued = (0..3)
        .map(|_| {
            let (status, body) = run(&ci, 0);
            assert_eq!(status, 202, "{body}");
            body["id"].as_str().unwrap().to_owned()
        })
        .collect::<Vec<_>>();
    let (status, refused) = run(&ci, 0);
    assert_eq!(status, 429, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("`ci` has 3 runs queued"),
        "{refused}"
    );
    // Another principal is not held back by it.
    assert_eq!(run(&admin, 0).0, 202);
    // A queued run cancelled makes room.
    call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{}/cancel", queued[0]),
        Some(&ci),
        None,
    );
    assert_eq!(run(&ci, 0).0, 202);
    call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{running}/cancel"),
        Some(&ci),
        None,
    );
}

#[test]
fn a_run_queued_across_a_restart_waits_for_the_lock_until_it_expires() {
    // Runs found queued at start were started at once, under any lock on their key.
    let dir = TestDir::new();
    setup(&dir);
    let config = dir.write(
        "shiphat.toml",
        "shutdown_grace = \"200ms\"\nworkflows = [\"workflows\"]\ndata_dir = \"data\"\n",
    );
    let config = config.to_str().unwrap();
    let admin = token(&dir, "root", "admin", &[]);
    let mut daemon = start(&dir, &["--config", config]);
    let slow = start_run(
        &daemon,
        &admin,
        json!({"workflow": "web", "inputs": {"sleep": 30000}}),
    );
    wait_run(&daemon, &admin, &slow, |r| r["status"] == "running");
    let queued = start_run(&daemon, &admin, json!({"workflow": "web"}));
    let (status, _) = call(
        &daemon,
        "PUT",
        "/api/v1/locks/web-staging",
        Some(&admin),
        Some(r#"{"reason": "migration", "expires_in": "10s"}"#),
    );
    assert_eq!(status, 200);
    stop(&mut daemon);
    // The lock outlives the restart (10 s is ample even on a loaded machine): the daemon
    // recovers its queued runs before it listens.
    let daemon = start(&dir, &["--config", config]);
    let held = get(&daemon, &admin, &queued);
    assert_eq!(held["status"], "queued", "{held}");
    assert_eq!(
        held["detail"], "held by the lock on `web-staging` of `root`: migration",
        "{held}"
    );
    // When the lock expires, it starts by itself.
    let run = wait_run(&daemon, &admin, &queued, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
}

/// A database of its own on the shared test server, and in it a token `root` (an admin)
/// made by `shiphat token create`. Returns the server (which stops when the last test
/// holding it drops it), the database's URL and the token.
fn postgresql_with_admin(
    dir: &TestDir,
) -> (
    std::sync::Arc<shiphat_store::testing::Postgres>,
    String,
    String,
) {
    let server = shiphat_store::testing::Postgres::shared();
    let url = server.database();
    // The test server trusts local users, so any password will do; it comes from a file, as
    // a real one would, never from the command line.
    dir.write("password", "unused\n");
    let args = [
        "root",
        "--role",
        "admin",
        "--store",
        &url,
        "--store-password-file",
        "password",
    ];
    let created = token_create(dir, &args);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let stderr = String::from_utf8_lossy(&created.stderr);
    assert!(stderr.contains(&format!("stored in {url}")), "{stderr}");
    let admin = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    (server, url, admin)
}

#[test]
fn a_daemon_on_postgresql_runs_a_workflow_and_finds_it_after_a_restart() {
    let dir = TestDir::new();
    setup(&dir);
    let (_server, url, admin) = postgresql_with_admin(&dir);
    let store = ["--store", url.as_str(), "--store-password-file", "password"];

    let mut daemon = start(&dir, &store);
    let id = start_run(&daemon, &admin, json!({"workflow": "web"}));
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    let events = sse(&daemon, &admin, &id, None);
    assert_eq!(events.last().unwrap().1["event"], "run_finished");
    stop(&mut daemon);
    // Nothing was kept in the data directory.
    assert!(!dir.path().join("data/shiphat.sqlite").exists());

    let daemon = start(&dir, &store);
    let (status, list) = call(&daemon, "GET", "/api/v1/runs", Some(&admin), None);
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["runs"][0]["id"], id.as_str(), "{list}");
    let run = get(&daemon, &admin, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    for step in ["build", "deploy"] {
        assert_eq!(step_of(&run, step)["status"], "succeeded", "{run}");
    }
    // The whole history, replayed from the database by the new daemon.
    assert_eq!(sse(&daemon, &admin, &id, None), events);
    drop(daemon);

    let store = shiphat_store::PgStore::open(&url, None).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    assert_eq!(
        store.run(&id).unwrap().unwrap().status,
        RunStatus::Succeeded
    );
}

/// Signs in with `token`; returns the session cookie (`name=value`) and the CSRF token.
fn open_session(daemon: &Daemon, token: &str) -> (String, String) {
    let (status, headers, body) = daemon.call(
        "POST",
        "/api/v1/session",
        &[("Content-Type", "application/json")],
        Some(&json!({ "token": token }).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let cookie = headers
        .get("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    (cookie, body["csrf"].as_str().unwrap().to_owned())
}

/// `PUT /api/v1/locks/{key}` as a browser: with the session cookie and, when given, the
/// CSRF token. Returns the status and the body.
fn lock_as_browser(daemon: &Daemon, key: &str, cookie: &str, csrf: Option<&str>) -> (u16, Value) {
    let mut headers = vec![("Cookie", cookie), ("Content-Type", "application/json")];
    if let Some(csrf) = csrf {
        headers.push(("X-CSRF-Token", csrf));
    }
    let (status, _, body) = daemon.call(
        "PUT",
        &format!("/api/v1/locks/{key}"),
        &headers,
        Some(r#"{"reason": "from the web page"}"#),
    );
    (status, body)
}

#[test]
fn a_session_signed_in_on_one_daemon_works_and_ends_on_another_sharing_its_database() {
    // Sessions lived in each daemon's memory: behind a load balancer, a browser signed in on
    // one daemon was a stranger to the next, unless the balancer kept it on the first.
    let dir = TestDir::new();
    setup(&dir);
    let (_server, url, admin) = postgresql_with_admin(&dir);
    let store = ["--store", url.as_str(), "--store-password-file", "password"];
    // Two daemons, each with a data directory of its own, on one database.
    let daemon = |data: &str| {
        let mut args = vec!["--data-dir", data, "--workflows", "workflows"];
        args.extend(store);
        Daemon::start(&dir, &args)
    };
    let (one, two) = (daemon("data-one"), daemon("data-two"));

    let (cookie, csrf) = open_session(&one, &admin);
    let (status, _, session) = two.call("GET", "/api/v1/session", &[("Cookie", &cookie)], None);
    assert_eq!(status, 200, "{session}");
    assert_eq!(session["principal"], "root", "{session}");
    assert_eq!(
        session["csrf"],
        csrf.as_str(),
        "the page's token, on any daemon"
    );

    // A mutating call on the other daemon needs the session's CSRF token there too.
    let (status, body) = lock_as_browser(&two, "web-staging", &cookie, None);
    assert_eq!(status, 403, "{body}");
    let (status, body) = lock_as_browser(&two, "web-staging", &cookie, Some(&csrf));
    assert_eq!(status, 200, "{body}");
    let (status, _, locks) = one.call("GET", "/api/v1/locks", &[("Cookie", &cookie)], None);
    assert_eq!(status, 200, "{locks}");
    assert_eq!(locks["locks"][0]["key"], "web-staging", "{locks}");
    assert_eq!(locks["locks"][0]["owner"], "root", "{locks}");

    // Signing out on one daemon ends the session on the other.
    let (status, _, body) = two.call(
        "DELETE",
        "/api/v1/session",
        &[("Cookie", &cookie), ("X-CSRF-Token", &csrf)],
        None,
    );
    assert_eq!(status, 204, "{body}");
    assert!(!signed_in(&one, &cookie));
    let (status, body) = lock_as_browser(&one, "web-prod", &cookie, Some(&csrf));
    assert_eq!(status, 401, "{body}");
}

#[test]
fn a_session_survives_a_restart_of_a_daemon_on_sqlite() {
    // A restart signed every browser out: sessions were kept in memory only.
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let mut daemon = start(&dir, &[]);
    let (cookie, csrf) = open_session(&daemon, &admin);
    stop(&mut daemon);

    let daemon = start(&dir, &[]);
    assert!(signed_in(&daemon, &cookie));
    let (status, body) = lock_as_browser(&daemon, "web-staging", &cookie, Some(&csrf));
    assert_eq!(status, 200, "{body}");
}

/// Runs shared by several daemons: four concurrency keys, steps that may run again.
const KEYED: &str = r#"
name: keyed
resume: auto
inputs:
  key: { type: choice, choices: [a, b, c, d], default: a }
concurrency: "key-${{ inputs.key }}"
steps:
  - id: one
    uses: echo
    idempotent: true
    with: { message: one, sleep_ms: 15 }
  - id: two
    uses: echo
    idempotent: true
    needs: one
    with: { message: two, sleep_ms: 15 }
  - id: three
    uses: echo
    idempotent: true
    needs: two
    with: { message: three, sleep_ms: 15 }
"#;

/// Waits for a person when its daemon dies mid-step.
const CAREFUL: &str = r#"
name: careful
inputs:
  key: { type: choice, choices: [a, b, c, d], default: a }
concurrency: "key-${{ inputs.key }}"
steps:
  - id: migrate
    uses: echo
    with: { message: migrating, sleep_ms: 40 }
"#;

/// Leases short enough that a dead daemon's runs are taken over within the test's time.
const SHORT_LEASES: &str = "[lease]\nrenew = \"200ms\"\nexpires = \"1s\"\n";

/// How long the cluster test may take to settle before it fails.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(180);

/// Follows run `id`'s event stream through whichever daemon is up (trying them in turn from
/// `first`), reconnecting with `Last-Event-ID` when a daemon dies or stalls under it, as a
/// client behind a load balancer does, until `run_finished`. Returns every event seen.
fn follow(
    addrs: &std::sync::Mutex<Vec<Option<String>>>,
    token: &str,
    id: &str,
    first: usize,
) -> Vec<(i64, Value)> {
    // A stalled daemon (SIGSTOP) answers nothing: give up on a connection after a while and
    // go on through another.
    let agent = support::agent(Duration::from_secs(3));
    let started = Instant::now();
    let mut seen: Vec<(i64, Value)> = Vec::new();
    for attempt in first.. {
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "run {id} never finished; saw {} events",
            seen.len()
        );
        let addr = addrs.lock().unwrap()[attempt % 3].clone();
        let Some(addr) = addr else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let mut request = agent
            .get(format!("http://{addr}/api/v1/runs/{id}/events"))
            .header("Authorization", format!("Bearer {token}"));
        if let Some((last, _)) = seen.last() {
            request = request.header("Last-Event-ID", last.to_string());
        }
        let Ok(mut response) = request.call() else {
            continue;
        };
        if response.status().as_u16() != 200 {
            continue;
        }
        let reader = BufReader::new(response.body_mut().as_reader());
        let (mut event_id, mut data) = (String::new(), String::new());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("id:") {
                event_id = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            } else if line.is_empty() && !data.is_empty() {
                let event: Value = serde_json::from_str(&data).unwrap();
                data.clear();
                let finished = event["event"] == "run_finished";
                seen.push((event_id.parse().unwrap(), event));
                if finished {
                    return seen;
                }
            }
        }
    }
    unreachable!("the loop ends by returning or failing")
}

/// Daemon `n` of several on the database at `url`, with the test's `shiphat.toml` and a
/// data directory of its own.
fn cluster_daemon(dir: &TestDir, url: &str, n: usize) -> Daemon {
    let data = format!("data{n}");
    let args = [
        "--config",
        "shiphat.toml",
        "--data-dir",
        &data,
        "--workflows",
        "workflows",
        "--store",
        url,
        "--store-password-file",
        "password",
    ];
    Daemon::start(dir, &args)
}

/// Sends `signal` to `daemon`.
fn signal(daemon: &Daemon, signal: libc::c_int) {
    // SAFETY: the pid is our own live child.
    assert_eq!(
        unsafe { libc::kill(daemon.child.id() as libc::pid_t, signal) },
        0
    );
}

/// Whether `holder` has a run `running` under its lease, as the runs' `daemon` field read
/// through `reader` says (`HOST:PID:RANDOM`).
fn holds_running(reader: &Daemon, token: &str, holder: &Daemon) -> bool {
    let (status, running) = call(
        reader,
        "GET",
        "/api/v1/runs?status=running&limit=500",
        Some(token),
        None,
    );
    assert_eq!(status, 200, "{running}");
    let pid = format!(":{}:", holder.child.id());
    running["runs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|run| run["daemon"].as_str().is_some_and(|d| d.contains(&pid)))
}

#[test]
fn three_daemons_on_one_database_lose_nothing_through_kills_and_a_pause() {
    // Issue 17: runs submitted round-robin to three daemons sharing one PostgreSQL database,
    // while one daemon after another is killed with SIGKILL and restarted, and one is paused
    // with SIGSTOP past its lease (its late writes must lose to the daemon that took its runs
    // over). Then: every run ended or waits for a person, no step was recorded complete
    // twice, no two runs of one key overlapped, nothing is stuck `running`, and every event
    // stream followed through whichever daemon was up saw every event of its run, in order.
    const RUNS: usize = 200;
    const KILLS: usize = 10;
    let dir = TestDir::new();
    dir.write("workflows/keyed.yaml", KEYED);
    dir.write("workflows/careful.yaml", CAREFUL);
    dir.write("shiphat.toml", SHORT_LEASES);
    let (_server, url, admin) = postgresql_with_admin(&dir);
    let start_one = |n: usize| cluster_daemon(&dir, &url, n);
    let mut daemons: Vec<Daemon> = (0..3).map(start_one).collect();
    let addrs = std::sync::Arc::new(std::sync::Mutex::new(
        daemons
            .iter()
            .map(|d| Some(d.addr.clone()))
            .collect::<Vec<_>>(),
    ));

    let mut ids = Vec::new();
    let mut followers = Vec::new();
    let mut kills = 0;
    let mut paused: Option<(usize, Instant)> = None;
    let mut pause_done = false;
    let keys = ["a", "b", "c", "d"];
    for i in 0..RUNS {
        // Round-robin over the daemons that answer.
        let mut n = i % 3;
        if paused.is_some_and(|(p, _)| p == n) {
            n = (n + 1) % 3;
        }
        let workflow = if i % 5 == 4 { "careful" } else { "keyed" };
        let body = json!({"workflow": workflow, "inputs": {"key": keys[i % keys.len()]}});
        let id = start_run(&daemons[n], &admin, body);
        if workflow == "keyed" && i % 10 == 0 {
            let (addrs, admin, id) = (addrs.clone(), admin.clone(), id.clone());
            followers.push((
                id.clone(),
                std::thread::spawn(move || follow(&addrs, &admin, &id, i + 1)),
            ));
        }
        ids.push(id);
        // Different moments: some kills land in a burst of new runs, others later.
        std::thread::sleep(Duration::from_millis((i as u64 * 7) % 23));
        if i % 17 == 16 && kills < KILLS {
            let mut k = kills % 3;
            if paused.is_some_and(|(p, _)| p == k) {
                k = (k + 1) % 3;
            }
            addrs.lock().unwrap()[k] = None;
            daemons[k].child.kill().unwrap();
            daemons[k].child.wait().unwrap();
            daemons[k] = start_one(k);
            addrs.lock().unwrap()[k] = Some(daemons[k].addr.clone());
            kills += 1;
        }
        if i >= RUNS / 2 && !pause_done {
            // Paused past its lease (1 s), with runs of its own in flight. A run lasts about
            // 45 ms, so one seen running a moment ago may have ended before the signal: the
            // database, read through another daemon, says whether the paused one holds any
            // now; if not, it goes on and the pause is tried again after the next run.
            let p = 2;
            addrs.lock().unwrap()[p] = None;
            signal(&daemons[p], libc::SIGSTOP);
            if holds_running(&daemons[0], &admin, &daemons[p]) {
                paused = Some((p, Instant::now()));
                pause_done = true;
            } else {
                signal(&daemons[p], libc::SIGCONT);
                addrs.lock().unwrap()[p] = Some(daemons[p].addr.clone());
            }
        }
        if let Some((p, since)) = paused
            && since.elapsed() > Duration::from_millis(2500)
        {
            signal(&daemons[p], libc::SIGCONT);
            addrs.lock().unwrap()[p] = Some(daemons[p].addr.clone());
            paused = None;
        }
    }
    if let Some((p, since)) = paused {
        std::thread::sleep(Duration::from_millis(2500).saturating_sub(since.elapsed()));
        signal(&daemons[p], libc::SIGCONT);
        addrs.lock().unwrap()[p] = Some(daemons[p].addr.clone());
    }
    assert_eq!(kills, KILLS);
    assert!(
        pause_done,
        "daemon 2 never held a running run when it was paused"
    );
    // Awake again, the paused daemon found its runs taken over, and stopped them without
    // writing (the checks below find none of its late writes).
    daemons[2].wait_for_stderr("is no longer this daemon's", DEADLINE);

    // Settled: nothing queued or running anywhere.
    let started = Instant::now();
    loop {
        let (status, all) = call(
            &daemons[0],
            "GET",
            "/api/v1/runs?limit=500",
            Some(&admin),
            None,
        );
        assert_eq!(status, 200, "{all}");
        let runs = all["runs"].as_array().unwrap();
        assert_eq!(runs.len(), RUNS);
        let busy: Vec<&Value> = runs
            .iter()
            .filter(|r| matches!(r["status"].as_str(), Some("queued" | "running")))
            .collect();
        if busy.is_empty() {
            break;
        }
        assert!(
            started.elapsed() < CLUSTER_DEADLINE,
            "runs never settled: {busy:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let streams: Vec<(String, Vec<(i64, Value)>)> = followers
        .into_iter()
        .map(|(id, follower)| (id, follower.join().unwrap()))
        .collect();
    drop(daemons);

    let store = shiphat_store::PgStore::open(&url, None).unwrap();
    assert_eq!(store.integrity_check().unwrap(), "ok");
    // Per key, every step's recorded interval, by run: no two runs' may overlap.
    let mut intervals: HashMap<String, Vec<(i64, i64, String)>> = HashMap::new();
    let mut interrupted = 0;
    for id in &ids {
        let run = store
            .run(id)
            .unwrap()
            .unwrap_or_else(|| panic!("run {id} was lost"));
        assert!(
            run.status.is_terminal() || run.status == RunStatus::Interrupted,
            "{run:?}"
        );
        if run.status == RunStatus::Interrupted {
            assert_eq!(
                run.workflow, "careful",
                "keyed runs resume by themselves: {run:?}"
            );
            interrupted += 1;
        }
        if run.workflow == "keyed" {
            assert_eq!(run.status, RunStatus::Succeeded, "{run:?}");
        }
        let steps = store.steps(id).unwrap();
        assert!(steps.iter().all(|s| s.status != "running"), "{steps:?}");
        let key = run.concurrency_key.clone().unwrap();
        for step in &steps {
            if let (Some(from), Some(to)) = (step.started_ms, step.finished_ms) {
                intervals
                    .entry(key.clone())
                    .or_default()
                    .push((from, to, id.clone()));
            }
        }
        steps_finished_once(&store, id);
    }
    for (key, mut spans) in intervals {
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, end, a), (start, _, b)) = (&pair[0], &pair[1]);
            assert!(
                a == b || end <= start,
                "runs {a} and {b} of key `{key}` overlapped: {pair:?}"
            );
        }
    }
    for (id, seen) in streams {
        let stored = store.events(&id, 0, 100_000).unwrap();
        let stored: Vec<(i64, Value)> = stored
            .into_iter()
            .map(|(seq, body)| (seq, serde_json::from_str(&body).unwrap()))
            .collect();
        assert_eq!(seen, stored, "the stream of {id} missed or repeated events");
    }
    eprintln!("{KILLS} kills, one pause; {interrupted} careful runs wait for a person");
}

#[test]
fn a_run_on_one_daemon_is_cancelled_through_another_and_handed_over_when_it_stops() {
    // Issue 17: a cancel reached a run only through the daemon that ran it, and a daemon that
    // stopped left its runs for its own next start.
    let dir = TestDir::new();
    setup(&dir);
    dir.write(
        "shiphat.toml",
        format!("shutdown_grace = \"100ms\"\n{SHORT_LEASES}"),
    );
    let (_server, url, admin) = postgresql_with_admin(&dir);
    let start_one = |n: usize| cluster_daemon(&dir, &url, n);
    // A runs whatever is asked while B is down, since any daemon up may claim a run.
    let mut a = start_one(0);
    let deploying = |run: &Value| {
        run["steps"].as_array().is_some_and(|s| {
            s.iter()
                .any(|s| s["id"] == "deploy" && s["status"] == "running")
        })
    };

    // Started on A, which alone was up when it was claimed; cancelled through B.
    let long = json!({"workflow": "web", "inputs": {"sleep": 60000}});
    let id = start_run(&a, &admin, long.clone());
    let running = wait_run(&a, &admin, &id, deploying);
    // Which daemon runs it: its host, process and a random part.
    let pid = a.child.id().to_string();
    assert!(
        running["daemon"]
            .as_str()
            .is_some_and(|d| d.split(':').nth(1) == Some(pid.as_str())),
        "{running}"
    );
    let mut b = start_one(1);
    let (status, body) = call(
        &b,
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let run = wait_run(&b, &admin, &id, terminal);
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(run["detail"], "cancelled by `root`", "{run}");

    // A stops with a run in flight: after its grace period it hands the run over, B takes
    // it (interrupted: `web` waits for a person), and it is resumed through B.
    stop(&mut b);
    let id = start_run(
        &a,
        &admin,
        // Long enough that the step is still running when the grace period ends, on a
        // machine busy with every other test.
        json!({"workflow": "web", "inputs": {"sleep": 6000}}),
    );
    wait_run(&a, &admin, &id, deploying);
    let b = start_one(1);
    stop(&mut a);
    let run = wait_run(&b, &admin, &id, |r| r["status"] == "interrupted");
    assert!(
        run["detail"]
            .as_str()
            .is_some_and(|d| d.contains("interrupted during step `deploy`")),
        "{run}"
    );
    let (status, body) = call(
        &b,
        "POST",
        &format!("/api/v1/runs/{id}/resume"),
        Some(&admin),
        None,
    );
    assert_eq!(status, 202, "{body}");
    let run = wait_run(&b, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["daemon"], Value::Null, "{run}");
    assert_eq!(step_of(&run, "build")["attempts"], 1, "{run}");
}

/// The three-letter name of the UTC weekday `days_from_now` days from now (`mon` … `sun`),
/// and the RFC 3339 time of that day's midnight as the API writes times.
fn utc_day(days_from_now: u64) -> (&'static str, String) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let day = now / 86400 + days_from_now;
    // 1970-01-01 was a Thursday.
    let name = ["thu", "fri", "sat", "sun", "mon", "tue", "wed"][(day % 7) as usize];
    (name, shiphat_store::rfc3339((day * 86400 * 1000) as i64))
}

#[test]
fn a_deploy_window_refuses_runs_outside_it_and_an_admin_forces_one_through() {
    let dir = TestDir::new();
    setup(&dir);
    // `web-prod` may deploy tomorrow only (UTC); `docs` is frozen for the century.
    let (tomorrow, opens) = utc_day(1);
    let config = dir.write(
        "shiphat.toml",
        format!(
            r#"workflows = ["workflows"]
data_dir = "data"
[[windows]]
applies_to = ["web-prod"]
timezone = "UTC"
days = ["{tomorrow}"]
[[freezes]]
applies_to = ["docs"]
timezone = "Europe/Paris"
from = "2000-01-01T00:00"
until = "2100-01-01T00:00"
reason = "holiday freeze"
"#
        ),
    );
    let admin = token(&dir, "root", "admin", &[]);
    let ci = token(&dir, "ci", "deployer", &["*"]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let post = |token: &str, body: Value| {
        call(
            &daemon,
            "POST",
            "/api/v1/runs",
            Some(token),
            Some(&body.to_string()),
        )
    };
    let prod = json!({"workflow": "web", "inputs": {"environment": "prod"}});
    let (status, refused) = post(&ci, prod.clone());
    assert_eq!(status, 409, "{refused}");
    let window = &refused["window"];
    assert_eq!(window["open"], false, "{refused}");
    assert_eq!(window["next_change_at"], opens.as_str(), "{refused}");
    assert_eq!(
        window["windows"],
        json!([format!("{tomorrow} 00:00–24:00 UTC")]),
        "{refused}"
    );
    let error = refused["error"].as_str().unwrap();
    assert!(
        error.starts_with("`web-prod` may not deploy now: outside its deploy windows")
            && error.contains(&format!(
                "it opens at {}",
                window["next_change_local"].as_str().unwrap()
            ))
            && error.ends_with("an admin may start it now with `{\"force\": true}`"),
        "{error}"
    );
    // A dry run changes nothing: no window holds it.
    let mut dry = prod.clone();
    dry["dry_run"] = json!(true);
    let rehearsal = start_run(&daemon, &ci, dry);
    assert_eq!(
        wait_run(&daemon, &ci, &rehearsal, terminal)["status"],
        "succeeded"
    );
    // The window is on `web-prod` only: staging deploys.
    let staging = start_run(
        &daemon,
        &ci,
        json!({"workflow": "web", "inputs": {"environment": "staging"}}),
    );
    // A freeze says its reason, and its end in its own zone.
    let (status, frozen) = post(&ci, json!({"workflow": "docs"}));
    assert_eq!(status, 409, "{frozen}");
    assert_eq!(frozen["window"]["freeze"], "holiday freeze", "{frozen}");
    assert_eq!(
        frozen["window"]["next_change_local"], "2100-01-01T00:00:00+01:00[Europe/Paris]",
        "{frozen}"
    );
    // Only an admin forces a run through, and the audit log says so.
    let mut forced = prod.clone();
    forced["force"] = json!(true);
    assert_eq!(post(&ci, forced.clone()).0, 403);
    let (status, accepted) = post(&admin, forced);
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    assert_eq!(
        wait_run(&daemon, &admin, id, terminal)["status"],
        "succeeded"
    );
    assert_eq!(
        wait_run(&daemon, &ci, &staging, terminal)["status"],
        "succeeded"
    );
    let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    let outcome = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["target"] == id)
        .map(|e| e["outcome"].as_str().unwrap().to_owned());
    assert_eq!(
        outcome.as_deref(),
        Some(
            format!(
                "accepted, forced past the deploy window: outside its deploy windows ({tomorrow} 00:00–24:00 UTC)"
            )
            .as_str()
        ),
        "{audit:#}"
    );
    // The environments view shows each one's window; `web-staging` has none.
    let (_, list) = call(&daemon, "GET", "/api/v1/environments", Some(&ci), None);
    let env = |key: &str| {
        list["environments"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no `{key}` in {list:#}"))
            .clone()
    };
    assert_eq!(env("web-prod")["window"]["open"], false, "{list:#}");
    assert_eq!(env("web-prod")["window"]["next_change_at"], opens.as_str());
    assert_eq!(env("docs")["window"]["freeze"], "holiday freeze");
    assert_eq!(env("web-staging")["window"], Value::Null);
}

/// A `shiphat.toml` with a freeze ("release train") of `workflow` from `from_ms` until
/// `until_ms`, written in UTC to the millisecond.
fn freeze_config(workflow: &str, from_ms: i64, until_ms: i64) -> String {
    let civil = |ms: i64| shiphat_store::rfc3339(ms).trim_end_matches('Z').to_owned();
    format!(
        r#"workflows = ["workflows"]
data_dir = "data"
[[freezes]]
applies_to = ["{workflow}"]
timezone = "UTC"
from = "{}"
until = "{}"
reason = "release train"
"#,
        civil(from_ms),
        civil(until_ms)
    )
}

#[test]
fn a_workflow_that_waits_for_its_window_stays_queued_and_starts_when_the_freeze_ends() {
    let dir = TestDir::new();
    dir.write(
        "workflows/later.yaml",
        r#"
name: later
concurrency: later
outside_window: wait
steps:
  - id: ship
    uses: echo
    with: { message: shipped }
"#,
    );
    // A freeze that ends a few seconds from now: long enough for the daemon to start and the
    // run to be requested inside it. Written in UTC, to the millisecond.
    let ends_ms = shiphat_store::now_ms() + 6_000;
    let config = dir.write(
        "shiphat.toml",
        freeze_config("later", ends_ms - 3_600_000, ends_ms),
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let (_, workflows) = call(&daemon, "GET", "/api/v1/workflows", Some(&admin), None);
    assert_eq!(
        workflows["workflows"][0]["outside_window"], "wait",
        "{workflows}"
    );
    let id = start_run(&daemon, &admin, json!({"workflow": "later"}));
    assert!(
        shiphat_store::now_ms() < ends_ms,
        "the run was requested after the freeze ended; the daemon took too long to start"
    );
    let said = format!(
        "waits for the deploy window: opens at {}",
        shiphat_store::rfc3339(ends_ms)
    );
    let waiting = wait_run(&daemon, &admin, &id, |r| r["detail"].is_string());
    assert_eq!(waiting["status"], "queued", "{waiting}");
    assert_eq!(waiting["detail"], said.as_str(), "{waiting}");
    // It starts by itself once the freeze ends, and not before.
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    let started = run["started_ms"].as_i64().unwrap();
    assert!(started >= ends_ms, "started at {started}, before {ends_ms}");
    let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    let waited = audit["entries"].as_array().unwrap().iter().any(|e| {
        e["target"] == id.as_str()
            && e["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("accepted, waits for the deploy window: opens at"))
    });
    assert!(waited, "{audit:#}");
}

/// Deploys, then asks a person: one approval by a deployer who did not start the run;
/// `rollback` says how it ended.
const APPROVED: &str = r#"
name: approved
inputs:
  required: { type: number, default: 1 }
steps:
  - id: deploy
    uses: echo
    with: { message: deployed }
  - id: decide
    name: Keep it?
    needs: deploy
    approval:
      message: "keep run ${{ run.id }}?"
      approvers: { roles: [deployer] }
    timeout: 30s
on_failure:
  - id: rollback
    uses: echo
    with: { message: "rolled back: ${{ steps.decide.outputs.decision }} by ${{ steps.decide.outputs.approver }}: ${{ steps.decide.outputs.comment }}" }
"#;

/// Two approvals, named principals only, the starter allowed.
const TWO: &str = r#"
name: two
steps:
  - id: decide
    approval:
      message: two of us
      approvers: { principals: [bob, dave, alice] }
      required: 2
      allow_self: true
"#;

/// Nobody answers within a second.
const QUICK: &str = r#"
name: quick
steps:
  - id: decide
    approval: { message: anyone? }
    timeout: 1s
on_failure:
  - id: rollback
    uses: echo
    with: { message: "rolled back after ${{ steps.decide.outputs.decision }}" }
"#;

fn decide(daemon: &Daemon, token: &str, id: &str, body: Value) -> (u16, Value) {
    call(
        daemon,
        "POST",
        &format!("/api/v1/runs/{id}/approvals"),
        Some(token),
        Some(&body.to_string()),
    )
}

fn waiting(run: &Value) -> bool {
    run["status"] == "waiting"
}

#[test]
fn an_approval_waits_for_another_person_and_is_audited() {
    // Issue 18: a run at an approval step is `waiting`; who may decide is checked (four eyes:
    // not the one who started it; a viewer is no approver); the decision becomes the step's
    // outputs and the audit log's entry; a rejection rolls back; a person counts once.
    let dir = TestDir::new();
    dir.write("workflows/approved.yaml", APPROVED);
    dir.write("workflows/two.yaml", TWO);
    let alice = token(&dir, "alice", "deployer", &["*"]);
    let bob = token(&dir, "bob", "deployer", &["*"]);
    let carol = token(&dir, "carol", "viewer", &[]);
    let dave = token(&dir, "dave", "viewer", &[]);
    let daemon = start(&dir, &[]);

    let id = start_run(&daemon, &alice, json!({"workflow": "approved"}));
    let run = wait_run(&daemon, &alice, &id, waiting);
    let approval = &run["approvals"][0];
    assert_eq!(approval["step"], "decide");
    assert_eq!(approval["message"], format!("keep run {id}?"));
    assert_eq!(approval["started_by"], "alice");
    assert_eq!(approval["outcome"], Value::Null);
    assert_eq!(approval["you_may_approve"], false, "{approval}");
    assert_eq!(approval["you_may_reject"], true, "{approval}");
    let deadline = approval["deadline_ms"].as_i64().unwrap();
    let since = approval["since_ms"].as_i64().unwrap();
    assert_eq!(deadline - since, 30_000);
    assert!(get(&daemon, &bob, &id)["approvals"][0]["you_may_approve"] == true);

    // The "waiting for you" list: bob's, not alice's (she started it) nor carol's.
    let listed = |token: &str| {
        let (status, list) = call(
            &daemon,
            "GET",
            "/api/v1/runs?for_me=true",
            Some(token),
            None,
        );
        assert_eq!(status, 200, "{list}");
        list["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(listed(&bob), [id.as_str()]);
    assert!(listed(&alice).is_empty());
    assert!(listed(&carol).is_empty());
    let (_, all) = call(
        &daemon,
        "GET",
        "/api/v1/runs?status=waiting",
        Some(&carol),
        None,
    );
    assert_eq!(all["runs"][0]["status"], "waiting", "{all}");
    let (_, running) = call(
        &daemon,
        "GET",
        "/api/v1/runs?status=running",
        Some(&carol),
        None,
    );
    assert!(running["runs"].as_array().unwrap().is_empty(), "{running}");

    let approve = json!({"decision": "approve", "comment": "looks fine"});
    let (status, refused) = decide(&daemon, &alice, &id, approve.clone());
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("four eyes"),
        "{refused}"
    );
    let (status, refused) = decide(&daemon, &carol, &id, approve.clone());
    assert_eq!(status, 403, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("it asks role `deployer`"),
        "{refused}"
    );
    let (status, bad) = decide(&daemon, &bob, &id, json!({"decision": "maybe"}));
    assert_eq!(status, 400, "{bad}");
    let (status, decided) = decide(&daemon, &bob, &id, approve.clone());
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["outcome"], "approved");
    let run = wait_run(&daemon, &alice, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    let step = step_of(&run, "decide");
    assert_eq!(step["outputs"]["approver"], "bob");
    assert_eq!(step["outputs"]["comment"], "looks fine");
    assert_eq!(step["summary"], "approved by bob (\"looks fine\")");
    let (status, late) = decide(&daemon, &bob, &id, approve);
    assert_eq!(status, 409, "{late}");

    // Rejected: the step fails with who and why, and on_failure rolls back.
    let id = start_run(&daemon, &alice, json!({"workflow": "approved"}));
    wait_run(&daemon, &alice, &id, waiting);
    let (status, decided) = decide(
        &daemon,
        &alice,
        &id,
        json!({"step": "decide", "decision": "reject", "comment": "wrong build"}),
    );
    assert_eq!(status, 200, "{decided}");
    let run = wait_run(&daemon, &alice, &id, terminal);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(
        step_of(&run, "decide")["error"]["message"],
        "rejected by alice (\"wrong build\")"
    );
    assert!(
        step_of(&run, "rollback")["summary"]
            .as_str()
            .unwrap()
            .contains("rolled back: rejected by alice: wrong build"),
        "{run}"
    );

    // Two needed: the same person twice counts once; a named viewer may decide.
    let id = start_run(&daemon, &alice, json!({"workflow": "two"}));
    wait_run(&daemon, &alice, &id, waiting);
    let approve = json!({"decision": "approve"});
    let (status, first) = decide(&daemon, &alice, &id, approve.clone());
    assert_eq!((status, &first["outcome"]), (200, &Value::Null), "{first}");
    let (status, again) = decide(&daemon, &alice, &id, approve.clone());
    assert_eq!(status, 409, "{again}");
    assert!(
        again["error"]
            .as_str()
            .unwrap()
            .contains("a second vote does not count"),
        "{again}"
    );
    assert!(waiting(&get(&daemon, &alice, &id)));
    let (status, second) = decide(&daemon, &dave, &id, approve);
    assert_eq!(
        (status, &second["outcome"]),
        (200, &json!("approved")),
        "{second}"
    );
    let run = wait_run(&daemon, &alice, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["approvals"][0]["votes"].as_array().unwrap().len(), 2);

    // Every decision is in the audit log, refusals included.
    let admin = token(&dir, "root", "admin", &[]);
    let (_, audit) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
    let entries: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"].as_str().unwrap().ends_with("/approvals"))
        .map(|e| {
            format!(
                "{}: {}",
                e["principal"].as_str().unwrap_or(""),
                e["outcome"].as_str().unwrap_or("")
            )
        })
        .collect();
    for entry in [
        "bob: approved `decide` with \"looks fine\": approved",
        "alice: rejected `decide` with \"wrong build\": rejected",
        "alice: approved `decide` (1 of 2 approvals)",
        "dave: approved `decide`: approved",
    ] {
        assert!(
            entries.iter().any(|e| e == entry),
            "no `{entry}` in {entries:#?}"
        );
    }
    assert!(
        entries
            .iter()
            .any(|e| e.starts_with("alice: ") && e.contains("four eyes")),
        "{entries:#?}"
    );
}

#[test]
fn an_approval_times_out_as_a_rejection_and_a_cancel_ends_the_wait() {
    let dir = TestDir::new();
    dir.write("workflows/quick.yaml", QUICK);
    dir.write("workflows/approved.yaml", APPROVED);
    let alice = token(&dir, "alice", "deployer", &["*"]);
    let daemon = start(&dir, &[]);
    let id = start_run(&daemon, &alice, json!({"workflow": "quick"}));
    let run = wait_run(&daemon, &alice, &id, terminal);
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(step_of(&run, "decide")["error"]["kind"], "timeout");
    assert_eq!(run["approvals"][0]["outcome"], "timed_out");
    assert_eq!(
        step_of(&run, "rollback")["summary"],
        "echo: rolled back after timed_out"
    );

    let id = start_run(&daemon, &alice, json!({"workflow": "approved"}));
    wait_run(&daemon, &alice, &id, waiting);
    let (status, _) = call(
        &daemon,
        "POST",
        &format!("/api/v1/runs/{id}/cancel"),
        Some(&alice),
        Some(""),
    );
    assert_eq!(status, 202);
    let run = wait_run(&daemon, &alice, &id, |run| {
        terminal(run) && run["approvals"][0]["outcome"] != Value::Null
    });
    assert_eq!(run["status"], "cancelled", "{run}");
    assert_eq!(step_of(&run, "decide")["status"], "cancelled");
    assert_eq!(run["approvals"][0]["outcome"], "cancelled", "{run}");
}

#[test]
fn a_waiting_run_survives_a_sigkill_with_its_deadline_and_votes() {
    // Issue 18: the wait outlives kill -9: after the restart the run waits again (whatever
    // `resume:` says; nothing was half done), from its first deadline, with the votes cast;
    // the CLI decides it.
    let dir = TestDir::new();
    dir.write("workflows/two.yaml", TWO);
    let alice = token(&dir, "alice", "deployer", &["*"]);
    let bob = token(&dir, "bob", "deployer", &["*"]);
    let mut daemon = start(&dir, &[]);
    let id = start_run(&daemon, &alice, json!({"workflow": "two"}));
    let before = wait_run(&daemon, &alice, &id, waiting)["approvals"][0].clone();
    let (status, _) = decide(&daemon, &bob, &id, json!({"decision": "approve"}));
    assert_eq!(status, 200);
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();

    let daemon = start(&dir, &[]);
    let run = wait_run(&daemon, &alice, &id, waiting);
    let after = &run["approvals"][0];
    assert_eq!(after["deadline_ms"], before["deadline_ms"], "{run}");
    assert_eq!(after["since_ms"], before["since_ms"], "{run}");
    assert_eq!(after["votes"][0]["principal"], "bob", "{run}");
    assert!(
        run["detail"]
            .as_str()
            .unwrap()
            .contains("resumed automatically"),
        "{run}"
    );

    let output = client(
        &dir,
        &daemon,
        &alice,
        &["runs", "approve", &id, "--comment", "ship it"],
    )
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("approved `decide` of run"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let run = wait_run(&daemon, &alice, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    let votes = &step_of(&run, "decide")["outputs"]["votes"];
    assert_eq!(votes[1]["comment"], "ship it", "{run}");

    // Nothing waits now: the CLI says so and exits non-zero.
    let output = client(&dir, &daemon, &bob, &["runs", "reject", &id])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("waits for no approval"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_run_accepted_in_its_window_does_not_start_after_it_closed() {
    // Issue 18: the window is checked when a run starts, not only when it is requested. A
    // run accepted while its window was open, queued behind a long deploy of its key, reaches
    // the front during a freeze: it waits, saying why, and starts when the freeze ends.
    let dir = TestDir::new();
    dir.write(
        "workflows/ship.yaml",
        r#"
name: ship
inputs:
  sleep: { type: number, default: 0 }
concurrency: ship
steps:
  - id: ship
    uses: echo
    with: { message: shipped, sleep_ms: "${{ inputs.sleep }}" }
"#,
    );
    let now = shiphat_store::now_ms();
    let (begins_ms, ends_ms) = (now + 4_000, now + 11_000);
    let config = dir.write("shiphat.toml", freeze_config("ship", begins_ms, ends_ms));
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let long = start_run(
        &daemon,
        &admin,
        json!({"workflow": "ship", "inputs": {"sleep": 6000}}),
    );
    let next = start_run(&daemon, &admin, json!({"workflow": "ship"}));
    assert!(
        shiphat_store::now_ms() < begins_ms,
        "the runs were requested after the freeze began; the daemon took too long to start"
    );
    let first = wait_run(&daemon, &admin, &long, terminal);
    assert_eq!(first["status"], "succeeded", "{first}");
    let held = wait_run(&daemon, &admin, &next, |r| {
        r["detail"]
            .as_str()
            .is_some_and(|d| d.contains("waits for the deploy window"))
    });
    assert_eq!(held["status"], "queued", "{held}");
    assert!(
        held["detail"].as_str().unwrap().contains("release train"),
        "{held}"
    );
    let run = wait_run(&daemon, &admin, &next, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    let started = run["started_ms"].as_i64().unwrap();
    assert!(started >= ends_ms, "started at {started}, before {ends_ms}");
}

#[test]
fn an_approval_on_one_daemon_is_decided_through_another_sharing_its_database() {
    // Issues 17 and 18: the run waits on whichever daemon claimed it; a person decides
    // through another behind the same load balancer, and the run goes on where it runs (the
    // vote reaches its daemon as a notification, with a poll each second as the backstop).
    // Then the daemon
    // running a waiting run dies: the other takes it over, and it waits again from the
    // first deadline with the vote cast.
    let dir = TestDir::new();
    dir.write("workflows/two.yaml", TWO);
    dir.write("shiphat.toml", SHORT_LEASES);
    let (_server, url, admin) = postgresql_with_admin(&dir);
    let person = |name: &str| {
        let created = token_create(
            &dir,
            &[
                name,
                "--role",
                "deployer",
                "--store",
                &url,
                "--store-password-file",
                "password",
            ],
        );
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        String::from_utf8(created.stdout).unwrap().trim().to_owned()
    };
    let (bob, dave) = (person("bob"), person("dave"));
    let mut a = cluster_daemon(&dir, &url, 0);
    let b = cluster_daemon(&dir, &url, 1);

    let id = start_run(&a, &admin, json!({"workflow": "two"}));
    let waiting_run = wait_run(&b, &admin, &id, waiting);
    let holder = waiting_run["daemon"].as_str().unwrap().to_owned();
    let (status, _) = decide(&b, &bob, &id, json!({"decision": "approve"}));
    assert_eq!(status, 200);
    // The daemon that runs it takes the second vote through the other one; it ends at once.
    let (ours, other) = if holder.contains(&format!(":{}:", a.child.id())) {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let (status, decided) = decide(other, &dave, &id, json!({"decision": "approve"}));
    assert_eq!(
        (status, &decided["outcome"]),
        (200, &json!("approved")),
        "{decided}"
    );
    let run = wait_run(ours, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");

    // A run waiting on daemon A outlives A. B is stopped while the run is asked for, so that
    // A claims it, then started again to take it over.
    drop(b);
    let id = start_run(&a, &admin, json!({"workflow": "two"}));
    let before = wait_run(&a, &admin, &id, waiting);
    let b = cluster_daemon(&dir, &url, 1);
    let (status, _) = decide(&b, &bob, &id, json!({"decision": "approve"}));
    assert_eq!(status, 200);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let taken = wait_run(&b, &admin, &id, |run| {
        waiting(run)
            && run["daemon"]
                .as_str()
                .is_some_and(|d| d.contains(&format!(":{}:", b.child.id())))
    });
    let (first, now) = (&before["approvals"][0], &taken["approvals"][0]);
    assert_eq!(now["deadline_ms"], first["deadline_ms"], "{taken}");
    assert_eq!(now["votes"][0]["principal"], "bob", "{taken}");
    let (status, _) = decide(&b, &dave, &id, json!({"decision": "approve"}));
    assert_eq!(status, 200);
    let run = wait_run(&b, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
}

#[test]
fn a_run_left_interrupted_between_two_writes_is_resumed_by_the_next_daemon() {
    // A daemon that takes a run over interrupts it, then queues it again (`resume: auto`):
    // two writes. One that died between them left the run interrupted for good (the next
    // daemon found nothing running to take over). Now a daemon looks for such runs.
    let dir = TestDir::new();
    dir.write(
        "workflows/auto.yaml",
        AUTO.replace("sleep_ms: 30,", "sleep_ms: 3000,"),
    );
    let admin = token(&dir, "root", "admin", &[]);
    let mut daemon = start(&dir, &[]);
    let id = start_run(&daemon, &admin, json!({"workflow": "auto"}));
    // Polled until the step is recorded running: it is not in the run's steps before.
    wait_run(&daemon, &admin, &id, |run| {
        run["steps"].as_array().is_some_and(|steps| {
            steps
                .iter()
                .any(|s| s["id"] == "one" && s["status"] == "running")
        })
    });
    daemon.child.kill().unwrap();
    daemon.child.wait().unwrap();
    // The first of the two writes, as the dead daemon's successor made it before it died.
    let store = SqliteStore::open(&dir.path().join("data/shiphat.sqlite")).unwrap();
    let interrupted = store.interrupt_running(&shiphat_store::Scope::All).unwrap();
    assert_eq!(interrupted.len(), 1);
    drop(store);

    let daemon = start(&dir, &[]);
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert!(
        run["detail"]
            .as_str()
            .unwrap()
            .contains("resumed automatically after a restart"),
        "{run}"
    );
}

/// Polls `look` until it answers, or fails the test after `deadline` with what it said last.
fn eventually<T>(deadline: Duration, what: &str, mut look: impl FnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match look() {
            Ok(found) => return found,
            Err(last) => assert!(
                started.elapsed() < deadline,
                "{what} never happened; last: {last}"
            ),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How long a first compile of the Python example may take on a loaded machine (24 s idle).
const FIRST_COMPILE: Duration = Duration::from_secs(600);

#[test]
fn a_daemon_answers_while_a_large_plugin_compiles_and_runs_meanwhile_wait_even_across_a_restart() {
    // Bug: the daemon compiled every plugin before it listened, 24 s for the Python example,
    // and a workflow's first run compiled on the deploy path.
    let hook = support::http::Server::start(|_, _| support::http::Reply::ok());
    let dir = TestDir::new();
    let notify = support::examples().join("notify.wasm");
    dir.write(
        "workflows/tell.yaml",
        format!(
            "name: tell\nsteps:\n  - id: notify\n    uses: {}\n    with: {{ url: \"{}\", release: \"1.0\", status: succeeded }}\n    allow: {{ http: [\"{}\"] }}\n",
            notify.display(),
            hook.url("/hooks/deploys"),
            hook.host()
        ),
    );
    dir.write("workflows/web.yaml", WEB);
    let admin = token(&dir, "root", "admin", &[]);
    // A compile cache of its own, empty: the first compile happens in this test.
    let args = [
        "--data-dir",
        "data",
        "--workflows",
        "workflows",
        "--cache-dir",
        "cache-one",
    ];
    let daemon = Daemon::listening(&dir, &args);

    // It answers at once: alive, not ready, and says what it compiles.
    assert_eq!(call(&daemon, "GET", "/healthz", None, None).0, 200);
    let (status, headers, body) = daemon.call("GET", "/readyz", &[], None);
    assert_eq!(status, 503, "{body}");
    assert_eq!(headers.get("retry-after"), Some("1"));
    assert!(
        body.as_str().unwrap().starts_with("loading workflows"),
        "{body}"
    );
    let tell = eventually(DEADLINE, "`tell` compiling", || {
        let (status, tell) = call(&daemon, "GET", "/api/v1/workflows/tell", Some(&admin), None);
        assert_eq!(status, 200, "{tell}");
        match tell["status"].as_str() {
            Some("compiling") => Ok(tell),
            Some("loading") => Err(tell.to_string()),
            other => panic!("`tell` must not be ready before its plugin compiled: {other:?}"),
        }
    });
    assert_eq!(tell["compiling"][0]["file"], "notify.wasm", "{tell}");
    assert!(
        tell["compiling"][0]["bytes"].as_u64().unwrap() > 10_000_000,
        "{tell}"
    );
    // Whoever watches the daemon hears why it is not ready, at the default log level.
    daemon.wait_for_stderr(
        &format!(
            "workflow `tell`: compiling `notify.wasm` ({}) into the compile cache",
            notify_size()
        ),
        DEADLINE,
    );
    // A workflow of small plugins is ready meanwhile, and its runs start.
    eventually(DEADLINE, "`web` ready", || {
        let (_, list) = call(&daemon, "GET", "/api/v1/workflows", Some(&admin), None);
        let web = list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == "web")
            .cloned()
            .unwrap_or_default();
        (web["status"] == "ready")
            .then_some(())
            .ok_or(list.to_string())
    });
    let quick = start_run(&daemon, &admin, json!({"workflow": "web"}));
    assert_eq!(
        wait_run(&daemon, &admin, &quick, terminal)["status"],
        "succeeded"
    );

    // A run of `tell` is accepted and waits for its plugin, saying so; no run compiles.
    let id = start_run(&daemon, &admin, json!({"workflow": "tell"}));
    let run_of = |daemon: &Daemon| {
        let path = format!("/api/v1/runs/{id}");
        call(daemon, "GET", &path, Some(&admin), None).1
    };
    let waits = |run: &Value| {
        assert_eq!(run["status"], "queued", "{run}");
        assert!(
            run["detail"]
                .as_str()
                .is_some_and(|d| d.contains("waits for its plugins to compile")),
            "{run}"
        );
    };
    waits(&run_of(&daemon));

    // The daemon dies before the compile ends; the next one, with an empty cache of its own
    // too, finds the run queued for a workflow it has not loaded yet: the run waits again.
    drop(daemon);
    let mut args = args;
    args[5] = "cache-two";
    let daemon = Daemon::listening(&dir, &args);
    waits(&run_of(&daemon));

    // The CLI as a client meanwhile: its run is accepted too, and it says why it waits.
    let mut client = dir
        .shiphat()
        .args(["run", "--server", &daemon.url(""), "tell", "--json"])
        .env("SHIPHAT_TOKEN", &admin)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // Then the plugin is compiled, the workflow ready, and the run starts and succeeds.
    let run = eventually(FIRST_COMPILE, "the run ending", || {
        let run = run_of(&daemon);
        if terminal(&run) {
            Ok(run)
        } else {
            Err(run.to_string())
        }
    });
    assert_eq!(run["status"], "succeeded", "{run}");
    let code = eventually(DEADLINE, "the client's run ending", || {
        match client.try_wait().unwrap() {
            Some(code) => Ok(code),
            None => Err("still running".into()),
        }
    });
    let mut said = String::new();
    std::io::Read::read_to_string(&mut client.stderr.take().unwrap(), &mut said).unwrap();
    assert!(code.success(), "{said}");
    assert!(
        said.contains("is queued: waits for its plugins to compile"),
        "{said}"
    );
    assert_eq!(hook.requests().len(), 2);
    let (_, tell) = call(&daemon, "GET", "/api/v1/workflows/tell", Some(&admin), None);
    assert_eq!(tell["status"], "ready", "{tell}");
    assert!(tell.get("compiling").is_none(), "{tell}");
    let (status, _, body) = daemon.call("GET", "/readyz", &[], None);
    assert_eq!((status, body), (200, json!("ready\n")));
}

#[test]
fn a_changed_workflow_keeps_its_old_version_serving_while_the_new_one_compiles() {
    // A reload that compiles a new plugin must not take the workflow out of service, nor hold
    // its runs: the version in service runs them until the new one is ready.
    let hook = support::http::Server::start(|_, _| support::http::Reply::ok());
    let dir = TestDir::new();
    let old = "name: tell\nsteps:\n  - id: notify\n    uses: echo\n    with: { message: old }\n";
    dir.write("workflows/tell.yaml", old);
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &["--cache-dir", "cache"]);
    let state = || call(&daemon, "GET", "/api/v1/workflows/tell", Some(&admin), None).1;
    assert_eq!(state()["status"], "ready");

    let new = format!(
        "name: tell\nsteps:\n  - id: notify\n    uses: {}\n    with: {{ url: \"{}\", release: \"2.0\", status: succeeded }}\n    allow: {{ http: [\"{}\"] }}\n",
        support::examples().join("notify.wasm").display(),
        hook.url("/hooks/deploys"),
        hook.host()
    );
    dir.write("workflows/tell.yaml", new);
    let reloading = eventually(DEADLINE, "the new version compiling", || {
        let tell = state();
        if tell["compiling"][0]["file"] == "notify.wasm" {
            Ok(tell)
        } else {
            Err(tell.to_string())
        }
    });
    assert_eq!(reloading["status"], "ready", "{reloading}");
    assert_eq!(reloading["reloading"], true, "{reloading}");
    daemon.wait_for_stderr(
        &format!(
            "compiling `notify.wasm` ({}) into the compile cache, first load only; the version in service runs its runs meanwhile",
            notify_size()
        ),
        DEADLINE,
    );

    // A run now starts at once, on the version in service.
    let id = start_run(&daemon, &admin, json!({"workflow": "tell"}));
    let run = wait_run(&daemon, &admin, &id, terminal);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["steps"][0]["summary"], "echo: old", "{run}");
    assert!(hook.requests().is_empty());
    assert_eq!(state()["reloading"], true, "the compile outlasted the run");

    // Once compiled, the new version serves.
    eventually(FIRST_COMPILE, "the new version ready", || {
        let tell = state();
        (tell["reloading"] == false && tell.get("compiling").is_none())
            .then_some(())
            .ok_or(tell.to_string())
    });
    let id = start_run(&daemon, &admin, json!({"workflow": "tell"}));
    assert_eq!(
        wait_run(&daemon, &admin, &id, terminal)["status"],
        "succeeded"
    );
    assert_eq!(hook.requests().len(), 1);
}

#[test]
fn a_run_interrupted_in_a_plugin_resumes_after_a_restart_once_the_plugin_is_compiled_again() {
    // A run recovered at start for a workflow whose plugins still compile must wait for them,
    // not fail as a workflow that is not loaded.
    let (arrived, first) = std::sync::mpsc::channel();
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let held = gate.clone();
    // The first post is held until the daemon that made it is dead: its step is in flight.
    let hook = support::http::Server::start(move |_, before| {
        if before.is_empty() {
            let _ = arrived.send(());
            let (open, opened) = &*held;
            let open = open.lock().unwrap();
            let _open = opened
                .wait_timeout_while(open, FIRST_COMPILE, |open| !*open)
                .unwrap();
        }
        support::http::Reply::ok()
    });
    let dir = TestDir::new();
    dir.write(
        "workflows/tell.yaml",
        format!(
            "name: tell\nresume: auto\nsteps:\n  - id: notify\n    uses: {}\n    idempotent: true\n    with: {{ url: \"{}\", release: \"1.0\", status: succeeded }}\n    allow: {{ http: [\"{}\"] }}\n",
            support::examples().join("notify.wasm").display(),
            hook.url("/hooks/deploys"),
            hook.host()
        ),
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = |cache: &str| {
        Daemon::listening(
            &dir,
            &[
                "--data-dir",
                "data",
                "--workflows",
                "workflows",
                "--cache-dir",
                cache,
            ],
        )
    };
    let one = daemon("cache-one");
    let id = start_run(&one, &admin, json!({"workflow": "tell"}));
    first
        .recv_timeout(FIRST_COMPILE)
        .expect("the step posts once its plugin is compiled");
    drop(one);
    let (open, opened) = &*gate;
    *open.lock().unwrap() = true;
    opened.notify_all();

    // The next daemon, on an empty cache of its own, interrupts the run and queues it again
    // (`resume: auto`, its step idempotent); it waits for the plugin, saying so.
    let two = daemon("cache-two");
    let path = format!("/api/v1/runs/{id}");
    let (_, run) = call(&two, "GET", &path, Some(&admin), None);
    assert_eq!(run["status"], "queued", "{run}");
    let detail = run["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("resumed automatically after a restart")
            && detail.contains("waits for its plugins to compile"),
        "{run}"
    );
    let run = eventually(FIRST_COMPILE, "the resumed run ending", || {
        let (_, run) = call(&two, "GET", &path, Some(&admin), None);
        if terminal(&run) {
            Ok(run)
        } else {
            Err(run.to_string())
        }
    });
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(hook.requests().len(), 2);
}

/// Issue 20: `shiphat runs why RUN` gives one account of a run: who started it with what, each
/// step in a line with the evidence of a failure, the rollback and what is deployed now.
#[test]
fn runs_why_says_who_what_failed_and_what_the_rollback_left_deployed() {
    let dir = TestDir::new();
    dir.write(
        "workflows/ship.yaml",
        r#"
name: ship
inputs:
  release: { type: string, required: true }
steps:
  - id: qa
    uses: echo
    with: { message: "412 tests green" }
  - id: deploy
    uses: echo
    needs: qa
    with: { message: "deployed ${{ inputs.release }}", outputs: { release: "${{ inputs.release }}" } }
  - id: verify
    uses: echo
    needs: deploy
    with: { fail: "metrics red: error_ratio 0.2 met failure condition result >= 0.05 (1 failed, limit 0)" }
on_failure:
  - id: rollback
    uses: echo
    with: { message: "back to 6", outputs: { release: "6" } }
"#,
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    let id = start_run(
        &daemon,
        &admin,
        json!({"workflow": "ship", "inputs": {"release": "7"}}),
    );
    wait_run(&daemon, &admin, &id, terminal);
    let run = Run::of(client(&dir, &daemon, &admin, &["runs", "why", &id]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    let why = run.stdout;
    assert!(
        why.starts_with(&format!(
            "`root` started `ship` (run `{id}`) from the API at "
        )),
        "{why}"
    );
    assert!(why.contains(" with release=7."), "{why}");
    assert!(why.contains("✓ `qa` succeeded"), "{why}");
    assert!(why.contains("412 tests green"), "{why}");
    assert!(
        why.contains("✗ `verify` failed")
            && why.contains("error_ratio 0.2 met failure condition result >= 0.05"),
        "{why}"
    );
    assert!(why.contains("✓ `rollback` (on failure) succeeded"), "{why}");
    assert!(
        why.contains("It failed at `verify`")
            && why.contains("The rollback ran and succeeded: release `6` is deployed now."),
        "{why}"
    );
}

/// Issue 20: when a reload changes what a workflow's steps may reach, the audit log says how,
/// so a widened grant that skipped review is still found.
#[test]
fn a_reload_that_changes_grants_is_in_the_audit_log() {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.path().join("workflows/build")).unwrap();
    dir.write(
        "workflows/site.yaml",
        "name: site\nsteps:\n  - id: deploy\n    uses: echo\n    allow: { read: [build] }\n",
    );
    let admin = token(&dir, "root", "admin", &[]);
    let daemon = start(&dir, &[]);
    dir.write(
        "workflows/site.yaml",
        "name: site\nsteps:\n  - id: deploy\n    uses: echo\n    allow: { http: [hooks.example.com], secrets: [TOKEN] }\n",
    );
    let entry = eventually(DEADLINE, "the reload's audit entry", || {
        let (_, log) = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None);
        log["entries"]
            .as_array()
            .and_then(|e| e.iter().find(|e| e["action"] == "reload workflow").cloned())
            .ok_or_else(|| log.to_string())
    });
    assert_eq!(entry["target"], "site", "{entry}");
    let outcome = entry["outcome"].as_str().unwrap();
    assert!(
        outcome.starts_with("grants widened: step `deploy`: "),
        "{outcome}"
    );
    assert!(
        outcome.contains("+ http `hooks.example.com`")
            && outcome.contains("+ secret `TOKEN`")
            && outcome.contains("- read `build`"),
        "{outcome}"
    );
    // The workflow's grant history is a viewer's to read, though the audit log is not.
    let viewer = token(&dir, "eve", "viewer", &[]);
    assert_eq!(
        call(&daemon, "GET", "/api/v1/audit", Some(&viewer), None).0,
        403
    );
    let (status, history) = call(
        &daemon,
        "GET",
        "/api/v1/workflows/site/grants",
        Some(&viewer),
        None,
    );
    assert_eq!(status, 200, "{history}");
    let change = &history["changes"][0];
    assert_eq!(change["widened"], true, "{history}");
    assert_eq!(
        change["steps"],
        json!(["step `deploy`: + http `hooks.example.com`, + secret `TOKEN`, - read `build`"]),
        "{history}"
    );
    assert!(
        change["file"].as_str().unwrap().ends_with("site.yaml"),
        "{history}"
    );
    assert_eq!(history["changes"].as_array().unwrap().len(), 1, "{history}");
    let (status, _) = call(
        &daemon,
        "GET",
        "/api/v1/workflows/nothing/grants",
        Some(&viewer),
        None,
    );
    assert_eq!(status, 404);
}

/// Issue 20: a run keeps the front end it was started from (a token's client of the API,
/// shiphat's CLI, the web page's session), and its account says so.
#[test]
fn a_run_says_where_it_was_started_from() {
    let dir = TestDir::new();
    setup(&dir);
    let admin = token(&dir, "root", "admin", &[]);
    let viewer = token(&dir, "eve", "viewer", &[]);
    let daemon = start(&dir, &[]);
    let by_api = start_run(&daemon, &admin, json!({"workflow": "web"}));
    let cli = Run::of(client(&dir, &daemon, &admin, &["run", "web", "--json"]));
    assert_eq!(cli.code, 0, "{}", cli.stderr);
    let by_cli = cli.events[0]["run_id"].as_str().unwrap().to_owned();
    let (cookie, csrf) = open_session(&daemon, &admin);
    let (status, _, answer) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[
            ("Cookie", &cookie),
            ("X-CSRF-Token", &csrf),
            ("Content-Type", "application/json"),
        ],
        Some(r#"{"workflow": "web"}"#),
    );
    assert_eq!(status, 202, "{answer}");
    let by_web = answer["id"].as_str().unwrap().to_owned();
    for (id, source, words) in [
        (&by_api, "api", "from the API"),
        (&by_cli, "cli", "from the CLI"),
        (&by_web, "web", "from the web page"),
    ] {
        let run = wait_run(&daemon, &viewer, id, terminal);
        assert_eq!(run["source"], source, "{run}");
        let (status, why) = call(
            &daemon,
            "GET",
            &format!("/api/v1/runs/{id}/why"),
            Some(&viewer),
            None,
        );
        assert_eq!(status, 200, "{why}");
        let first = why["lines"][0].as_str().unwrap();
        assert_eq!(
            first,
            format!(
                "`root` started `web` (run `{id}`) {words} at {} with environment=staging, sleep=0.",
                run["created_at"].as_str().unwrap()
            )
        );
        assert!(
            why["lines"].as_array().unwrap().iter().any(|l| l == "It succeeded"
                || l.as_str().unwrap().starts_with("It succeeded in ")),
            "{why}"
        );
    }
    let (_, list) = call(&daemon, "GET", "/api/v1/runs", Some(&viewer), None);
    let mut sources: Vec<&str> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["source"].as_str().unwrap())
        .collect();
    sources.sort();
    assert_eq!(sources, ["api", "cli", "web"]);
}

/// Issue 20: the daemon serves each workflow's handbook: what `shiphat explain` prints for its
/// file, but saying who may run it by the daemon's own principals.
#[test]
fn the_daemons_handbook_is_explains_with_who_may_run_it() {
    let dir = TestDir::new();
    setup(&dir);
    let _admin = token(&dir, "root", "admin", &[]);
    let _deployer = token(&dir, "ci", "deployer", &["web/staging"]);
    let _other = token(&dir, "docs-bot", "deployer", &["docs"]);
    let viewer = token(&dir, "eve", "viewer", &[]);
    // `docs` is frozen from 2000 to 2100.
    let config = dir.write(
        "shiphat.toml",
        freeze_config("docs", 946_684_800_000, 4_102_444_800_000),
    );
    let daemon = start(&dir, &["--config", config.to_str().unwrap()]);
    let explain = Run::of({
        let mut command = dir.shiphat();
        command.args(["explain", "workflows/web.yaml"]);
        command
    });
    assert_eq!(explain.code, 0, "{}", explain.stderr);
    let generic = "- Who may run it is the daemon's: principals with the `deployer` role whose patterns name it.";
    assert!(explain.stdout.contains(generic), "{}", explain.stdout);
    let expected = explain.stdout.replace(
        generic,
        "- Who may run it, by this daemon's principals: `ci` (deployer, in environments matching `staging`), `root` (admin).",
    );
    // A workflow's handbook, once its plugins are loaded (503 before).
    let handbook = |name: &str| {
        eventually(DEADLINE, "the handbook", || {
            match call(
                &daemon,
                "GET",
                &format!("/api/v1/workflows/{name}/handbook"),
                Some(&viewer),
                None,
            ) {
                (200, Value::String(text)) => Ok(text),
                (status, body) => Err(format!("{status}: {body}")),
            }
        })
    };
    assert_eq!(handbook("web").trim_end(), expected.trim_end());
    // A freeze that names a workflow is in its handbook, with whether it holds now.
    let docs = handbook("docs");
    assert!(
        docs.contains("- Who may run it, by this daemon's principals: `docs-bot` (deployer), `root` (admin).\n")
            && docs.contains("- A freeze of this daemon names it; closed now: release train (frozen until 2100-01-01T00:00:00+00:00[UTC]).\n"),
        "{docs}"
    );
    assert_eq!(
        call(
            &daemon,
            "GET",
            "/api/v1/workflows/nothing/handbook",
            Some(&viewer),
            None
        )
        .0,
        404
    );
}

/// Issue 20: `shiphat why deploy` answers "why was I blocked" without running anything: the
/// first reason (role, pattern, lock, a run holding a key that does not queue), or that the
/// deploy would go through, or wait behind which run.
#[test]
fn why_deploy_gives_the_first_reason_without_running_anything() {
    let dir = TestDir::new();
    dir.write("workflows/web.yaml", WEB);
    dir.write("workflows/docs.yaml", DOCS);
    let admin = token(&dir, "root", "admin", &[]);
    let alice = token(&dir, "alice", "deployer", &["web/staging", "docs"]);
    let viewer = token(&dir, "vic", "viewer", &[]);
    let daemon = start(&dir, &[]);
    let why = |token: &str, args: &[&str]| {
        let mut full = vec!["why", "deploy"];
        full.extend_from_slice(args);
        let run = Run::of(client(&dir, &daemon, token, &full));
        (run.code, run.stdout + &run.stderr)
    };
    let runs_before = call(&daemon, "GET", "/api/v1/runs", Some(&admin), None).1;

    let (code, out) = why(&alice, &["web", "--input", "environment=staging"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "✓ `alice` may deploy `web` to `staging` now\n")
    );
    let (code, out) = why(&alice, &["web", "--input", "environment=prod"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("✗ ") && out.contains("(pattern)"), "{out}");
    let (code, out) = why(&viewer, &["web"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(role)"), "{out}");
    let (code, out) = why(&alice, &["web", "--input", "environment=qa"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("(inputs)"), "{out}");

    // A lock on the key is named with its reason.
    let (status, body) = call(
        &daemon,
        "PUT",
        "/api/v1/locks/web-staging",
        Some(&admin),
        Some(r#"{"reason": "release freeze"}"#),
    );
    assert_eq!(status, 200, "{body}");
    let (code, out) = why(&alice, &["web", "--input", "environment=staging"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("release freeze") && out.contains("(lock)"),
        "{out}"
    );

    // A run holding a key: a queueing workflow would wait behind it, `docs` is refused.
    let id = start_run(
        &daemon,
        &admin,
        json!({"workflow": "web", "inputs": {"environment": "prod", "sleep": 60000}}),
    );
    wait_run(&daemon, &admin, &id, |r| r["status"] == "running");
    let (code, out) = why(&admin, &["web", "--input", "environment=prod"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("run `{id}`")) && out.contains("(queue)"),
        "{out}"
    );
    let docs = start_run(&daemon, &admin, json!({"workflow": "docs"}));
    wait_run(&daemon, &admin, &docs, |r| r["status"] == "running");
    let (code, out) = why(&alice, &["docs"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("does not queue") && out.contains("(busy)"),
        "{out}"
    );

    // Asking is not audited: a principal asking in a loop cannot fill the audit log.
    let audit = call(&daemon, "GET", "/api/v1/audit", Some(&admin), None).1;
    assert!(
        !audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "POST /api/v1/check-deploy"),
        "{audit}"
    );
    // Nothing was started by asking.
    let runs = call(&daemon, "GET", "/api/v1/runs", Some(&admin), None).1;
    assert_eq!(
        runs["runs"].as_array().unwrap().len(),
        runs_before["runs"].as_array().unwrap().len() + 2,
        "{runs}"
    );
}

/// The size of the Python example as the daemon prints it. Regression: the tests said
/// `19 MB`, and a build of the example that came out at 18.4 MB failed them.
fn notify_size() -> String {
    let bytes = std::fs::metadata(support::examples().join("notify.wasm"))
        .expect("the Python example is built")
        .len();
    shiphat_protocol::fmt_size(bytes)
}
