//! Issue 20, part 4: `shiphat verify backtest` replays a verification step's conditions over
//! what a real Prometheus recorded, loaded from series written with `promtool tsdb
//! create-blocks-from openmetrics`, and says beside each deploy what the step would have said.
//! The texts are golden files in tests/backtest/ (`BLESS=1` rewrites them).

mod support;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use support::prometheus::Prometheus;
use support::{Daemon, Run, TestDir};

/// How long any wait in these tests may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

/// 2026-11-02T09:00:00Z, when the recorded history of `checkout_history` starts.
const HISTORY_START: u64 = 1_793_610_000;

/// Four hours of a checkout service's error ratio, a sample every 15 s from
/// [`HISTORY_START`], in OpenMetrics: 0.4% as a rule, 9% from 10:00 to 10:20 (a bad deploy
/// at 10:00), and 3% from 11:30 to 11:40 (a good deploy at 11:30 during a payment provider's
/// blip). Nothing before 09:00.
fn checkout_history() -> String {
    let mut text = String::from(
        "# HELP checkout_error_ratio Share of checkout requests that failed.\n\
         # TYPE checkout_error_ratio gauge\n",
    );
    for t in (HISTORY_START..HISTORY_START + 4 * 3600).step_by(15) {
        let minute = (t - HISTORY_START) / 60;
        let ratio = match minute {
            60..80 => 0.09,
            150..160 => 0.03,
            _ => 0.004,
        };
        text.push_str(&format!(
            "checkout_error_ratio{{service=\"checkout\"}} {ratio} {t}\n"
        ));
    }
    text.push_str("# EOF\n");
    text
}

/// A workflow whose `verify` step measures `query` three times a minute apart, and passes
/// while it stays under `limit`; the step's `with:` may use the input `release`.
fn checkout_workflow(prometheus: &Prometheus, query: &str, limit: &str) -> String {
    format!(
        r#"name: checkout
inputs:
  release: {{ type: string, default: "1" }}
steps:
  - id: deploy
    uses: echo
    with: {{ message: "deploying ${{{{ inputs.release }}}}" }}
  - id: verify
    uses: metrics-verifier
    needs: deploy
    allow:
      http: ["{addr}"]
    with:
      provider: prometheus
      address: {url}
      metrics:
        - name: error_ratio
          query: '{query}'
          success_condition: result < {limit}
          interval: 1m
          count: 3
on_failure:
  - id: rollback
    uses: echo
    with: {{ message: rolling back }}
"#,
        addr = prometheus.addr,
        url = prometheus.url(),
    )
}

fn backtest(dir: &TestDir, args: &[&str]) -> Run {
    let mut command = dir.shiphat();
    command.args(["verify", "backtest"]).args(args);
    Run::of(command)
}

/// Runs a backtest that must be refused before it replays anything: exit 2, `words` on
/// stderr, nothing on stdout.
fn refused(dir: &TestDir, args: &[&str], words: &str) {
    let run = backtest(dir, args);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(words), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

#[test]
fn times_given_are_replayed_against_the_recorded_series() {
    let prometheus = Prometheus::recorded(&checkout_history(), Duration::from_secs(300));
    let dir = TestDir::new();
    let query = r#"max(checkout_error_ratio{service="checkout"})"#;
    let at = [
        "--at",
        "2026-11-02T10:00:00Z=bad",
        "--at",
        "2026-11-02T11:30:00Z=good",
        "--at",
        "2026-11-02T12:00:00Z=good",
        // Before the history starts: nothing to judge.
        "--at",
        "2026-11-02T08:00:00Z",
    ];
    let mut failures = Vec::new();
    for (name, limit) in [("at-times", "0.05"), ("at-times-tighter", "0.02")] {
        let file = dir.write(
            &format!("{name}.yaml"),
            checkout_workflow(&prometheus, query, limit),
        );
        let run = backtest(&dir, &[&[file.to_str().unwrap()][..], &at].concat());
        assert_eq!(run.code, 0, "{}", run.stderr);
        failures.extend(support::golden(
            &format!("tests/backtest/{name}.txt"),
            &run.stdout,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // The replay takes the measurements a live run would have taken, each of its own time.
    let file = dir.path().join("at-times.yaml");
    let run = backtest(
        &dir,
        &[
            file.to_str().unwrap(),
            // An offset other than `Z`, as a person in Paris writes it.
            "--at",
            "2026-11-02T11:19:00+01:00=bad",
            "--json",
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let row = &report["rows"][0];
    assert_eq!(row["step_started_at"], "2026-11-02T10:19:00Z", "{row}");
    assert_eq!(row["verdict"], "fail", "{row}");
    assert_eq!(row["happened"]["bad"], true, "{row}");
    let measured: Vec<(&str, &str)> = row["outputs"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["time"].as_str().unwrap(), m["outcome"].as_str().unwrap()))
        .collect();
    // 0.09 until 10:20, then 0.4% again; `failure_limit` 0 ends it at the first failure.
    assert_eq!(measured, [("2026-11-02T10:19:00.000Z", "Failed")]);
}

#[test]
fn a_step_that_cannot_replay_is_refused_with_what_can() {
    let dir = TestDir::new();
    let file = dir.write(
        "w.yaml",
        "name: w\nsteps:\n  - id: say\n    uses: echo\n    with: { message: hi }\n",
    );
    refused(
        &dir,
        &[file.to_str().unwrap(), "--at", "2026-11-02T10:00:00Z"],
        "no step of `w` can replay the past: none uses a plugin that takes `replay_at`, such as `metrics-verifier`",
    );
    refused(
        &dir,
        &[
            file.to_str().unwrap(),
            "--step",
            "say",
            "--at",
            "2026-11-02T10:00:00Z",
        ],
        "step `say` uses `echo`, which cannot replay the past (its `with:` takes no `replay_at`)",
    );
    // A time or a verdict `--at` cannot read, on a step that could replay (no server is
    // asked: the words are checked first).
    let replayable = dir.write(
        "replayable.yaml",
        r#"name: replayable
steps:
  - id: verify
    uses: metrics-verifier
    allow: { http: ["127.0.0.1:9"] }
    with:
      provider: prometheus
      address: http://127.0.0.1:9
      metrics: [{ name: up, query: up, success_condition: result < 1 }]
"#,
    );
    refused(
        &dir,
        &[replayable.to_str().unwrap(), "--at", "yesterday=bad"],
        "`yesterday` is not a time",
    );
    refused(
        &dir,
        &[
            replayable.to_str().unwrap(),
            "--at",
            "2026-11-02T10:00:00Z=maybe",
        ],
        "`maybe` is neither `good` nor `bad`",
    );

    // A metric read from a page, which keeps no past, is refused once, by the plugin's words.
    let scraped = dir.write(
        "scraped.yaml",
        r#"name: scraped
steps:
  - id: verify
    uses: metrics-verifier
    allow: { http: ["127.0.0.1:9"] }
    with:
      provider: scrape
      address: http://127.0.0.1:9/metrics
      metrics: [{ name: errors, series: errors_total, success_condition: result < 1 }]
"#,
    );
    refused(
        &dir,
        &[
            scraped.to_str().unwrap(),
            "--at",
            "2026-11-02T10:00:00Z",
            "--at",
            "2026-11-02T11:00:00Z",
        ],
        "step `verify` cannot be replayed: metric `errors` reads `scrape`, which answers only for now",
    );
}

/// A token for a principal, made with `shiphat token create` in the test's data directory.
fn token(dir: &TestDir, name: &str, role: &str) -> String {
    let mut command = dir.shiphat();
    command
        .args(["token", "create", name, "--role", role, "--pattern", "*"])
        .arg("--data-dir")
        .arg(dir.path().join("data"));
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Starts a run on the daemon and waits for its end; returns its id.
fn deploy(daemon: &Daemon, token: &str, body: Value) -> String {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, _, answer) =
        daemon.call("POST", "/api/v1/runs", &headers, Some(&body.to_string()));
    assert_eq!(status, 202, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    loop {
        let (_, _, run) = daemon.call("GET", &format!("/api/v1/runs/{id}"), &headers, None);
        if matches!(run["status"].as_str(), Some("succeeded" | "failed")) {
            return id;
        }
        assert!(started.elapsed() < DEADLINE, "run {id} did not end: {run}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole path from a daemon's history: real deploys, verified live against the same
/// Prometheus (one good, one rolled back by its run, one rolled back by hand later with a
/// deploy of the release before it), are replayed with the conditions of the file.
#[test]
fn the_daemons_past_deploys_are_replayed_beside_what_happened() {
    // Each release's error ratio over the last ten minutes; the samples stay visible to a
    // query for an hour after, through the live runs and the backtest.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut series = String::from("# TYPE checkout_error_ratio gauge\n");
    for t in (now - 600..now).step_by(15) {
        series.push_str(&format!(
            "checkout_error_ratio{{release=\"1\"}} 0.004 {t}\n\
             checkout_error_ratio{{release=\"2\"}} 0.09 {t}\n\
             checkout_error_ratio{{release=\"3\"}} 0.004 {t}\n"
        ));
    }
    series.push_str("# EOF\n");
    let prometheus = Prometheus::recorded(&series, Duration::from_secs(3600));

    let dir = TestDir::new();
    let query = r#"max(checkout_error_ratio{release="${{ inputs.release }}"})"#;
    // Measured a second apart in the live runs, so that they end quickly.
    let live = checkout_workflow(&prometheus, query, "0.05").replace(
        "interval: 1m\n          count: 3",
        "interval: 1s\n          count: 2",
    );
    dir.write("workflows/checkout.yaml", &live);
    let token = token(&dir, "ci", "deployer");
    let daemon = Daemon::start(&dir, &["--data-dir", "data", "--workflows", "workflows"]);
    let release = |r: &str| json!({"workflow": "checkout", "inputs": {"release": r}});
    let good = deploy(&daemon, &token, release("1"));
    let bad = deploy(&daemon, &token, release("2"));
    // Release 3 passes its checks, and is rolled back by hand later: release 1 again.
    let undone = deploy(&daemon, &token, release("3"));
    let again = deploy(&daemon, &token, release("1"));
    // A dry run deployed nothing: it is no deploy to judge.
    deploy(
        &daemon,
        &token,
        json!({"workflow": "checkout", "inputs": {"release": "2"}, "dry_run": true}),
    );

    let mut failures = Vec::new();
    for (name, limit) in [("history", "0.05"), ("history-tighter", "0.001")] {
        let file = dir.write(
            &format!("{name}.yaml"),
            live.replace("result < 0.05", &format!("result < {limit}")),
        );
        let run = backtest(
            &dir,
            &[
                file.to_str().unwrap(),
                "--since",
                "1h",
                "--server",
                &daemon.url(""),
                "--token",
                &token,
            ],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        // Run ids and times differ each time; what the test pins is the rest.
        let text = run
            .stdout
            .replace(&good, "RUN-GOOD")
            .replace(&bad, "RUN-BAD")
            .replace(&undone, "RUN-UNDONE")
            .replace(&again, "RUN-AGAIN");
        let text: String = text
            .lines()
            .map(|line| match line.split_once("Z  run ") {
                Some((time, rest)) if time.len() == 19 => format!("TIME  run {rest}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        failures.extend(support::golden(
            &format!("tests/backtest/{name}.txt"),
            &text,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
