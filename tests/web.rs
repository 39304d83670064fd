//! The web page: its assets and sessions over real HTTP, then the whole page in a real
//! headless Chromium (Debian's `chromium`, driven by playwright-core from the npm registry)
//! against a real `shiphat serve` deploying with the real plugins.
//!
//! The browser scenario is `tests/web/e2e.mjs`; it saves its screenshots in
//! `artifacts/screenshots/` at the repository root (or `$SHIPHAT_SCREENSHOTS`), which CI
//! keeps. Every page state it visits, on a desktop, a phone and in the dark scheme, is
//! audited with axe-core for WCAG 2.1 A and AA. `cargo xtask test` installs Chromium,
//! playwright-core and axe-core and sets `SHIPHAT_PLAYWRIGHT` and `SHIPHAT_AXE`.

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::http::{Reply, Server};
use support::{Daemon, TestDir};

/// How long any one wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long the whole browser scenario may take: three deploys with their metric checks,
/// Chromium's start and the screenshots, with room for a loaded machine.
const E2E_DEADLINE: Duration = Duration::from_secs(300);

const ADMIN_TOKEN: &str = "web-test-admin-0123456789abcdef0123456789abcdef";
const VIEWER_TOKEN: &str = "web-test-viewer-0123456789abcdef0123456789abcdef";
const DEPLOYER_TOKEN: &str = "web-test-deployer-0123456789abcdef0123456789abcdef";

/// The deploy the page drives: QA, deploy, verify the error ratio, ask a person when it is
/// inconclusive, roll back on a breach or a rejection. Releases 1 and 2 are healthy; 3 fails
/// 8% of its requests; 4 fails 3%, between the limits. `METRICS` is replaced by the address
/// of the test's app.
const DEPLOY: &str = r#"
name: deploy
description: Check QA, deploy a release of the site, verify its error ratio, roll back if it breaches.
inputs:
  release: { type: choice, choices: ["1", "2", "3", "4"], required: true, description: The release to deploy }
  environment: { type: choice, choices: [staging, production], default: staging, description: Where it goes }
  note: { type: string, description: Why you deploy (kept in the run's inputs) }
  smoke: { type: bool, default: true, description: Verify the error ratio after the deploy }
  batch: { type: number, default: 100, description: Percent of the hosts to switch at once }
concurrency: deploy-${{ inputs.environment }}
steps:
  - id: qa
    name: Check QA
    uses: qa-checker
    with: { source: junit, reports: [reports/*.xml], max_failures: 0 }
    allow: { read: [reports] }
  - id: deploy
    name: Deploy
    uses: deployer
    needs: qa
    with:
      strategy: symlink
      release: ${{ inputs.release }}
      source: build/${{ inputs.release }}
      target: www/${{ inputs.environment }}
      keep: 5
    allow: { read: [build], write: [www] }
  - id: verify
    name: Verify metrics
    uses: metrics-verifier
    needs: deploy
    # With `if`, a step runs whatever its needs ended with (docs/workflows.md): say both.
    if: inputs.smoke && steps.deploy.status == 'succeeded'
    with:
      provider: scrape
      address: http://METRICS/metrics/${{ inputs.environment }}
      on_inconclusive: succeed
      metrics:
        - name: error_ratio
          series: demo_error_ratio
          success_condition: result < 0.01
          failure_condition: result > 0.05
          interval: 300ms
          count: 4
          failure_limit: 1
    allow: { http: ["127.0.0.1:*"] }
  - id: decide
    name: Keep the release?
    needs: verify
    if: success() && steps.verify.outputs.verdict == 'Inconclusive'
    approval:
      message: "Release ${{ inputs.release }} in ${{ inputs.environment }} has an error ratio of ${{ steps.verify.outputs.measurements[0].value }}: above 0.01, not yet 0.05. Keep it?"
      approvers: { roles: [deployer] }
    timeout: 10m
on_failure:
  - id: rollback
    name: Roll back
    uses: deployer
    if: steps.deploy.status == 'succeeded'
    with:
      strategy: symlink
      action: rollback
      release: ${{ steps.deploy.outputs.previous_release }}
      target: www/${{ inputs.environment }}
    allow: { write: [www] }
"#;

/// An approval nobody answers in time.
const GATE: &str = r#"
name: gate
steps:
  - id: decide
    name: Go ahead?
    approval:
      message: Nobody will answer this one in time.
      approvers: { roles: [deployer] }
    timeout: 4s
"#;

/// A quick workflow for the API checks, with no plugin but `echo`.
const HELLO: &str = r#"
name: hello
inputs:
  environment: { type: choice, choices: [dev], default: dev }
concurrency: hello-${{ inputs.environment }}
steps:
  - id: greet
    uses: echo
    with: { message: hello }
"#;

/// A run to interrupt: the daemon is killed while its one step sleeps. Its step's name and
/// log line are long, one of them without a space, for the page to wrap on a phone.
const SLOW: &str = r#"
name: slow
steps:
  - id: wait
    name: Wait for the downstream caches of every region to expire before the next deploy may start
    uses: echo
    with:
      message: "waiting-on-https://cdn.example/regions/eu-west-1/caches/expiry?ids=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
      sleep_ms: 1500
"#;

const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="2" failures="0">
  <testsuite name="site" tests="2" failures="0">
    <testcase name="renders" classname="site"/>
    <testcase name="links" classname="site"/>
  </testsuite>
</testsuites>
"#;

fn config() -> String {
    let sha = |t: &str| hex::encode(Sha256::digest(t));
    format!(
        r#"
data_dir = "data"
workflows = ["workflows"]

[[principals]]
name = "alice"
roles = ["admin"]
token_sha256 = "{}"

[[principals]]
name = "victor"
roles = ["viewer"]
token_sha256 = "{}"

[[principals]]
name = "dana"
roles = ["deployer"]
token_sha256 = "{}"

# Open at every hour: the environments view shows it, and no deploy is refused by it.
[[windows]]
applies_to = ["deploy-staging"]
timezone = "Europe/Paris"
"#,
        sha(ADMIN_TOKEN),
        sha(VIEWER_TOKEN),
        sha(DEPLOYER_TOKEN),
    )
}

/// Lays out the releases, the JUnit report, the targets and the workflows, and starts the
/// app whose `/metrics/ENV` error ratio is that of the release `www/ENV/current` points at
/// (it serves until the returned server is dropped).
/// A workflow's paths are taken from its own folder, so all of it is under `workflows/`.
fn setup() -> (TestDir, Server) {
    let dir = TestDir::new();
    for (release, ratio) in [("1", 0.002), ("2", 0.003), ("3", 0.08), ("4", 0.03)] {
        dir.write(
            &format!("workflows/build/{release}/index.html"),
            format!("<h1>Release {release}</h1>\n"),
        );
        dir.write(
            &format!("workflows/build/{release}/ratio"),
            format!("{ratio}\n"),
        );
    }
    dir.write("workflows/reports/junit.xml", JUNIT);
    let www = dir.path().join("workflows/www");
    for env in ["staging", "production"] {
        std::fs::create_dir_all(www.join(env)).unwrap();
    }
    let metrics = serve_metrics(www);
    dir.write(
        "workflows/deploy.yaml",
        DEPLOY.replace("METRICS", &metrics.host()),
    );
    dir.write("workflows/hello.yaml", HELLO);
    dir.write("workflows/gate.yaml", GATE);
    dir.write("shiphat.toml", config());
    (dir, metrics)
}

/// The app's metrics on a loopback port: `/metrics/ENV` gives the error ratio of the release
/// `ENV/current` points at under `www`.
fn serve_metrics(www: PathBuf) -> Server {
    Server::start(move |request, _| {
        let env = request.path().strip_prefix("/metrics/").unwrap_or("");
        let ratio = std::fs::read_to_string(www.join(env).join("current/ratio"))
            .unwrap_or_else(|_| "0".into());
        let body = format!(
            "# TYPE demo_error_ratio gauge\ndemo_error_ratio {}\n",
            ratio.trim()
        );
        Reply::new(200, "text/plain; version=0.0.4", body)
    })
}

fn start(dir: &TestDir) -> Daemon {
    Daemon::start(dir, &["--config", "shiphat.toml"])
}

#[test]
fn the_page_is_served_from_the_binary_with_a_strict_policy() {
    let (dir, _metrics) = setup();
    let daemon = start(&dir);
    let (status, headers, body) = daemon.call("GET", "/", &[], None);
    assert_eq!(status, 200);
    assert!(
        headers
            .get("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let csp = headers.get("content-security-policy").expect("a CSP");
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(headers.get("x-content-type-options"), Some("nosniff"));
    // Nothing is fetched from elsewhere: the page works offline.
    let page = body.as_str().unwrap();
    assert!(page.contains("/assets/app.js"), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "{page}"
    );
    for (asset, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let (status, headers, body) = daemon.call("GET", &format!("/assets/{asset}"), &[], None);
        assert_eq!(status, 200, "{asset}");
        assert!(headers.get("content-type").unwrap().starts_with(kind));
        assert!(
            body.as_str().is_some_and(|b| b.len() > 100),
            "{asset} is empty"
        );
    }
    let (status, _, _) = daemon.call("GET", "/assets/../shiphat.toml", &[], None);
    assert_eq!(status, 404);
}

/// Signs in; returns the cookie pair to send back and the CSRF token.
fn sign_in(daemon: &Daemon, token: &str) -> (String, String) {
    let (status, headers, body) = daemon.call(
        "POST",
        "/api/v1/session",
        &[("content-type", "application/json")],
        Some(&json!({ "token": token }).to_string()),
    );
    assert_eq!(status, 200, "{body}");
    let cookie = headers.get("set-cookie").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie} lacks {attribute}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    (pair, body["csrf"].as_str().unwrap().to_owned())
}

#[test]
fn a_token_becomes_a_session_and_mutations_need_the_csrf_token() {
    let (dir, _metrics) = setup();
    let daemon = start(&dir);
    let json = ("content-type", "application/json");

    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/session",
        &[json],
        Some(r#"{"token": "nope"}"#),
    );
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["field"], "token");
    // A cross-site form can only send form encoding; it is refused before the token is read.
    let (status, _, _) = daemon.call(
        "POST",
        "/api/v1/session",
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(&format!("token={ADMIN_TOKEN}")),
    );
    assert_eq!(status, 415);

    let (cookie, csrf) = sign_in(&daemon, ADMIN_TOKEN);
    let with_cookie = ("cookie", cookie.as_str());
    let (status, _, me) = daemon.call("GET", "/api/v1/session", &[with_cookie], None);
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["principal"], "alice");
    assert_eq!(me["roles"], json!(["admin"]));
    assert_eq!(me["csrf"], csrf.as_str());

    let start_run = json!({ "workflow": "hello" }).to_string();
    // The cookie alone, as a forged cross-site request would carry it, starts nothing.
    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[with_cookie, json],
        Some(&start_run),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("X-CSRF-Token"),
        "{body}"
    );
    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[with_cookie, json, ("x-csrf-token", "0123")],
        Some(&start_run),
    );
    assert_eq!(status, 403, "{body}");
    let (_, _, runs) = daemon.call("GET", "/api/v1/runs", &[with_cookie], None);
    assert_eq!(runs["runs"], json!([]), "a refused call started a run");

    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[with_cookie, json, ("x-csrf-token", &csrf)],
        Some(&start_run),
    );
    assert_eq!(status, 202, "{body}");

    // The audit names who signed in.
    let (_, _, audit) = daemon.call(
        "GET",
        "/api/v1/audit",
        &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        None,
    );
    let actions: Vec<String> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{} {}", e["action"], e["outcome"]))
        .collect();
    assert!(
        actions
            .iter()
            .any(|a| a.contains("POST /api/v1/session") && a.contains("signed in as `alice`")),
        "{actions:?}"
    );

    let (status, headers, _) = daemon.call(
        "DELETE",
        "/api/v1/session",
        &[with_cookie, ("x-csrf-token", &csrf)],
        None,
    );
    assert_eq!(status, 204);
    assert!(headers.get("set-cookie").unwrap().contains("Max-Age=0"));
    let (status, _, _) = daemon.call("GET", "/api/v1/session", &[with_cookie], None);
    assert_eq!(status, 401, "a signed-out session still works");
}

#[test]
fn environments_say_what_runs_where_and_the_feed_names_changed_runs() {
    let (dir, _metrics) = setup();
    let daemon = start(&dir);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let auth = ("authorization", bearer.as_str());

    // Listen to the feed before anything happens.
    let feed = support::agent(DEADLINE)
        .get(&daemon.url("/api/v1/events"))
        .header("Authorization", &bearer)
        .call()
        .expect("the feed answers");
    assert_eq!(feed.status().as_u16(), 200);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut reader = feed.into_body().into_reader();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });

    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[auth, ("content-type", "application/json")],
        Some(r#"{"workflow": "hello"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let mut seen = String::new();
    while !seen.contains(&format!("\"run\":\"{id}\"")) {
        let left = DEADLINE.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&chunk),
            Err(_) => panic!("the feed never named run {id}: {seen:?}"),
        }
    }
    assert!(seen.contains("event: run"), "{seen}");

    let run = wait_for_end(&daemon, &id);
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["environment"], "dev");
    assert_eq!(run["plan"][0]["uses"], "echo", "{run}");
    let (_, _, envs) = daemon.call("GET", "/api/v1/environments", &[auth], None);
    let envs = envs["environments"].as_array().unwrap();
    let hello = envs
        .iter()
        .find(|e| e["key"] == "hello-dev")
        .unwrap_or_else(|| panic!("no `hello-dev` in {envs:?}"));
    assert_eq!(hello["current"]["id"], id.as_str());
    assert_eq!(hello["deploys"].as_array().unwrap().len(), 1);
    assert_eq!(hello["deploys"][0]["rolled_back"], false);
}

fn wait_for_end(daemon: &Daemon, id: &str) -> Value {
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let started = Instant::now();
    loop {
        let (_, _, run) = daemon.call(
            "GET",
            &format!("/api/v1/runs/{id}"),
            &[("authorization", &bearer)],
            None,
        );
        if ["succeeded", "failed", "cancelled"].contains(&run["status"].as_str().unwrap_or("")) {
            return run;
        }
        assert!(started.elapsed() < DEADLINE, "run {id} did not end: {run}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the screenshots go: `$SHIPHAT_SCREENSHOTS`, else `artifacts/screenshots/`.
fn screenshots() -> PathBuf {
    let dir = std::env::var_os("SHIPHAT_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::root().join("artifacts/screenshots"));
    std::fs::create_dir_all(&dir).expect("the screenshots folder");
    for entry in std::fs::read_dir(&dir).unwrap().flatten() {
        if entry.path().extension().is_some_and(|e| e == "png") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    dir
}

/// What the browser test needs, or a message saying how to get it.
fn browser_tools() -> (PathBuf, PathBuf, PathBuf) {
    let playwright = std::env::var_os("SHIPHAT_PLAYWRIGHT")
        .map(PathBuf::from)
        .expect(
            "SHIPHAT_PLAYWRIGHT is not set: run the tests with `cargo xtask test`, which installs \
         playwright-core, or point it at a playwright-core package folder",
        );
    assert!(
        playwright.join("package.json").is_file(),
        "SHIPHAT_PLAYWRIGHT=`{}` is not a playwright-core package folder",
        playwright.display()
    );
    let axe = std::env::var_os("SHIPHAT_AXE").map(PathBuf::from).expect(
        "SHIPHAT_AXE is not set: run the tests with `cargo xtask test`, which installs axe-core, \
         or point it at an axe-core package folder",
    );
    assert!(
        axe.join("axe.min.js").is_file(),
        "SHIPHAT_AXE=`{}` is not an axe-core package folder (no axe.min.js)",
        axe.display()
    );
    let chromium = std::env::var_os("SHIPHAT_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.is_file(),
        "no Chromium at `{}`: install Debian's `chromium` package (`cargo xtask test` does)",
        chromium.display()
    );
    (playwright, axe, chromium)
}

#[test]
fn a_person_deploys_watches_and_locks_from_the_page_in_chromium() {
    let (playwright, axe, chromium) = browser_tools();
    let (dir, _metrics) = setup();
    let interrupted = interrupt_a_run(&dir);
    let daemon = start(&dir);
    let shots = screenshots();
    let script = support::root().join("tests/web/e2e.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .current_dir(dir.path())
        .env("SHIPHAT_URL", daemon.url(""))
        .env("SHIPHAT_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("SHIPHAT_VIEWER_TOKEN", VIEWER_TOKEN)
        .env("SHIPHAT_DEPLOYER_TOKEN", DEPLOYER_TOKEN)
        .env("SHIPHAT_SCREENSHOTS", &shots)
        .env("SHIPHAT_PLAYWRIGHT", &playwright)
        .env("SHIPHAT_AXE", &axe)
        .env("SHIPHAT_CHROMIUM", &chromium)
        .env("SHIPHAT_INTERRUPTED", &interrupted)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start `node`: install Node.js");
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > E2E_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    let log = format!(
        "--- e2e stdout\n{out}\n--- e2e stderr\n{err}\n--- screenshots in {}",
        shots.display()
    );
    match status {
        None => panic!("the browser test ran past {E2E_DEADLINE:?}\n{log}"),
        Some(s) => assert!(s.success(), "the browser test failed ({s})\n{log}"),
    }
    println!("{log}");
    assert!(out.contains("e2e: ok"), "{log}");
    for shot in [
        "signin",
        "runs",
        "run",
        "run-failed",
        "environments",
        "deploy-refused",
        "phone-run",
        "phone-long-names",
        "dark-run-failed",
        "dark-phone-run",
        "handbook",
        "handbook-grants",
    ] {
        let file = shots.join(format!("{shot}.png"));
        let size = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "no screenshot `{}`\n{log}", file.display());
    }
    assert_deployed(&dir.path().join("workflows"), "staging", "2");
}

/// Starts a run of `slow`, kills the daemon (SIGKILL) while its step runs, and returns the
/// run's id: the next daemon finds it `interrupted`, for the page to resume.
fn interrupt_a_run(dir: &TestDir) -> String {
    dir.write("workflows/slow.yaml", SLOW);
    let daemon = start(dir);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, _, body) = daemon.call(
        "POST",
        "/api/v1/runs",
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        Some(r#"{"workflow": "slow"}"#),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let (_, _, run) = daemon.call(
            "GET",
            &format!("/api/v1/runs/{id}"),
            &[("authorization", &bearer)],
            None,
        );
        if run["steps"][0]["status"] == "running" {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the step never started: {run}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(daemon);
    id
}

/// After the scenario, the target's `current` is the release the page last saw succeed (the
/// bad release was rolled back).
fn assert_deployed(root: &Path, env: &str, release: &str) {
    let current =
        std::fs::read_link(root.join("www").join(env).join("current")).expect("a `current` link");
    assert!(
        current
            .to_string_lossy()
            .ends_with(&format!("releases/{release}")),
        "`current` of {env} points at {}",
        current.display()
    );
}

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}
