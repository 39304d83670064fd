//! `shiphat run`, `validate`, `plugin inspect` and `schema` through the real binary: exit
//! codes, events, inputs, expressions between steps, retries, the failure path, the compile
//! cache and pinned digests.

mod support;

use std::time::Duration;

use support::{LiveRun, Run, TestDir};

#[test]
fn outputs_flow_between_steps_and_the_run_succeeds() {
    let dir = TestDir::new();
    let yaml = r#"name: flow
inputs:
  release: { type: string, required: true }
  replicas: { type: number, default: 2 }
env:
  GREETING: "release ${{ inputs.release }}"
steps:
  - id: build
    uses: echo
    with:
      message: "building ${{ inputs.release }}"
      outputs: { artifact: "app-${{ inputs.release }}.tar.gz", replicas: "${{ inputs.replicas }}" }
  - id: ship
    uses: echo
    needs: build
    with:
      message: "${{ env.GREETING }} ships ${{ steps.build.outputs.artifact }} x${{ steps.build.outputs.replicas }} in ${{ run.id }}"
"#;
    let run = dir.run(yaml, &["--input", "release=42"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("build")["outputs"]["artifact"], "app-42.tar.gz");
    // A template that is one expression keeps its type.
    assert_eq!(run.step("build")["outputs"]["replicas"], 2);
    let run_id = run.events[0]["run_id"].as_str().unwrap();
    let logs = run.logs("ship");
    assert!(
        logs.contains(&format!("release 42 ships app-42.tar.gz x2 in {run_id}").as_str()),
        "{logs:?}"
    );
    assert_eq!(run.finished()["status"], "succeeded");
}

#[test]
fn events_have_their_documented_fields() {
    let dir = TestDir::new();
    let run = dir.run(
        "name: events\nsteps:\n  - id: one\n    uses: echo\n    with: { message: hi }\n",
        &[],
    );
    let kinds: Vec<&str> = run
        .events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"run_started"));
    assert_eq!(kinds.last(), Some(&"run_finished"));
    assert!(
        kinds.contains(&"step_started")
            && kinds.contains(&"log")
            && kinds.contains(&"step_finished")
    );
    let started = &run.events[0];
    for field in ["run_id", "workflow", "dry_run", "steps", "time"] {
        assert!(
            started.get(field).is_some(),
            "run_started lacks `{field}`: {started}"
        );
    }
    let finished = run.step("one");
    for field in [
        "run_id",
        "step",
        "name",
        "section",
        "status",
        "attempts",
        "duration_ms",
        "summary",
        "outputs",
        "error",
        "time",
    ] {
        assert!(
            finished.get(field).is_some(),
            "step_finished lacks `{field}`: {finished}"
        );
    }
    assert_eq!(finished["summary"], "echo: hi");
    let log = run.events.iter().find(|e| e["event"] == "log").unwrap();
    for field in ["run_id", "step", "level", "source", "message", "time"] {
        assert!(log.get(field).is_some(), "log lacks `{field}`: {log}");
    }
}

#[test]
fn a_failure_runs_on_failure_and_finally_and_exits_1() {
    let dir = TestDir::new();
    let yaml = r#"name: failing
steps:
  - id: deploy
    uses: echo
    with: { outputs: { release: "2" } }
  - id: verify
    uses: echo
    needs: deploy
    with: { fail: "error rate 5% over 1%" }
  - id: after
    uses: echo
    needs: verify
on_failure:
  - id: rollback
    uses: echo
    if: steps.verify.status == 'failed'
    with: { message: "rolling back ${{ steps.deploy.outputs.release }}" }
finally:
  - id: cleanup
    uses: echo
"#;
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.error("verify"), ("failed", "error rate 5% over 1%"));
    assert_eq!(run.status("after"), "skipped");
    assert_eq!(run.status("rollback"), "succeeded");
    assert!(
        run.logs("rollback").contains(&"rolling back 2"),
        "{:?}",
        run.logs("rollback")
    );
    assert_eq!(run.status("cleanup"), "succeeded");
    assert_eq!(
        run.finished()["failed_steps"],
        serde_json::json!(["verify"])
    );
}

#[test]
fn a_success_skips_on_failure_and_continue_on_error_lets_the_run_go_on() {
    let dir = TestDir::new();
    let yaml = r#"name: lenient
inputs:
  mode: { type: string, default: normal }
steps:
  - id: flaky
    uses: echo
    with: { fail: "not important" }
    continue_on_error: true
  - id: next
    uses: echo
    needs: flaky
  - id: only_if_flaky_failed
    uses: echo
    needs: flaky
    if: ${{ steps.flaky.status == 'failed' && !false }}
  - id: never
    uses: echo
    if: inputs.mode == 'x'
on_failure:
  - id: rollback
    uses: echo
"#;
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status("flaky"), "failed");
    assert_eq!(run.step("flaky")["continued"], true);
    assert_eq!(run.status("next"), "succeeded");
    assert_eq!(run.status("only_if_flaky_failed"), "succeeded");
    assert_eq!(run.status("never"), "skipped");
    assert!(
        run.events.iter().all(|e| e["step"] != "rollback"),
        "on_failure ran after a success"
    );
}

#[test]
fn transient_errors_are_retried_with_backoff_and_failures_are_not() {
    let dir = TestDir::new();
    let yaml = r#"name: retry
steps:
  - id: pending
    uses: echo
    with: { transient_until: 2 }
    retries: { count: 3, backoff: { initial: 50ms, factor: 2, max: 1s } }
  - id: hopeless
    uses: echo
    with: { transient_until: 10 }
    retries: { count: 1, backoff: { initial: 10ms } }
    continue_on_error: true
  - id: red
    uses: echo
    with: { fail: "QA red" }
    retries: 3
    continue_on_error: true
"#;
    let run = dir.run(yaml, &[]);
    assert_eq!(run.step("pending")["attempts"], 3);
    assert_eq!(run.status("pending"), "succeeded");
    // 50 ms then 100 ms of backoff.
    assert!(run.step("pending")["duration_ms"].as_f64().unwrap() >= 150.0);
    assert_eq!(run.step("hopeless")["attempts"], 2);
    assert_eq!(run.error("hopeless").0, "transient");
    assert!(run.error("hopeless").1.contains("gave up after 2 attempts"));
    assert_eq!(run.step("red")["attempts"], 1);
}

#[test]
fn independent_steps_run_in_parallel() {
    let dir = TestDir::new();
    let mut yaml = String::from("name: parallel\nsteps:\n");
    for i in 0..4 {
        yaml.push_str(&format!(
            "  - id: s{i}\n    uses: echo\n    with: {{ sleep_ms: 500 }}\n"
        ));
    }
    yaml.push_str("  - id: join\n    uses: echo\n    needs: [s0, s1, s2, s3]\n");
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let total = run.finished()["duration_ms"].as_f64().unwrap();
    assert!(
        total < 1500.0,
        "four 500 ms steps took {total} ms: not parallel"
    );
}

#[test]
fn dry_run_is_passed_to_every_plugin() {
    let dir = TestDir::new();
    let yaml = "name: dry\nsteps:\n  - id: one\n    uses: probe\n";
    let run = dir.run(yaml, &["--dry-run"]);
    assert_eq!(run.events[0]["dry_run"], true);
    assert_eq!(run.step("one")["outputs"]["dry_run"], true);
}

#[test]
fn bad_inputs_exit_2_and_name_the_problem() {
    let dir = TestDir::new();
    let yaml = "name: inputs\ninputs:\n  environment: { type: choice, choices: [staging, production], required: true }\nsteps:\n  - id: one\n    uses: echo\n";
    let run = dir.run(yaml, &["--input", "enviroment=staging"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("enviroment") && run.stderr.contains("environment"),
        "{}",
        run.stderr
    );
    assert!(run.events.is_empty(), "something ran");
    let run = dir.run(yaml, &["--input", "environment=prod"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("staging, production") || run.stderr.contains("staging`, `production"),
        "{}",
        run.stderr
    );
    let run = dir.run(yaml, &["--input", "nonsense"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("NAME=VALUE"), "{}", run.stderr);
}

#[test]
fn an_invalid_workflow_exits_2_with_file_line_and_column() {
    let dir = TestDir::new();
    let run = dir.run(
        "name: typo\nsteps:\n  - id: one\n    uses: echo\n    timout: 5s\n",
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("workflow.yaml:5:5"), "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean `timeout`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn with_is_checked_against_the_plugin_schema_before_anything_runs() {
    let dir = TestDir::new();
    let run = dir.run(
        "name: schema\nsteps:\n  - id: one\n    uses: echo\n    with:\n      sleep_ms: soon\n",
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("workflow.yaml:6:"), "{}", run.stderr);
    assert!(run.stderr.contains("sleep_ms"), "{}", run.stderr);
    assert!(run.events.is_empty());
}

#[test]
fn an_unknown_plugin_says_where_it_looked() {
    let dir = TestDir::new();
    let run = dir.run(
        "name: missing\nsteps:\n  - id: one\n    uses: no-such-plugin\n",
        &[],
    );
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("plugin `no-such-plugin` not found in"),
        "{}",
        run.stderr
    );
    // Regression: a typo only got "build the bundled plugins", not the name it meant.
    let run = dir.run("name: typo\nsteps:\n  - id: one\n    uses: deployr\n", &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("did you mean `deployer`?"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_alias_bomb_is_refused_quickly() {
    let dir = TestDir::new();
    // Nine levels of nine aliases each: 9^9 (387 million) strings once expanded.
    let mut yaml = String::from("a0: &a0 \"");
    yaml.push_str(&"x".repeat(100_000));
    yaml.push_str("\"\n");
    for level in 1..=9 {
        let refs = vec![format!("*a{}", level - 1); 9].join(", ");
        yaml.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    yaml.push_str("name: bomb\nsteps: []\n");
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("alias"), "{}", run.stderr);
    assert!(run.wall < Duration::from_secs(1), "took {:?}", run.wall);
    assert!(
        run.max_rss_kib < 100 * 1024,
        "peaked at {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn validate_checks_files_and_plugins() {
    let dir = TestDir::new();
    let good = dir.write(
        "good.yaml",
        "name: good\nsteps:\n  - id: one\n    uses: noop\n",
    );
    let bad = dir.write(
        "bad.yaml",
        "name: bad\nsteps:\n  - id: one\n    uses: noop\n    needs: two\n",
    );
    let mut command = dir.shiphat();
    command.arg("validate").arg(&good).arg(&bad);
    let run = Run::of(command);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("good.yaml: ok (1 steps)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("bad.yaml:5:"), "{}", run.stderr);
}

#[test]
fn plugin_inspect_shows_describe_and_imports() {
    let dir = TestDir::new();
    let mut command = dir.shiphat();
    command
        .args(["plugin", "inspect", "--json"])
        .arg(support::plugin("echo"));
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let info: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["name"], "echo");
    assert!(info["config_schema"]["properties"]["message"].is_object());
    let imports = info["imports"].as_array().unwrap();
    assert!(
        imports
            .iter()
            .any(|i| i.as_str().unwrap().starts_with("shiphat:plugin/host")),
        "{imports:?}"
    );
    let exports: Vec<&str> = info["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(
        exports.contains(&"run") && exports.contains(&"describe"),
        "{exports:?}"
    );
}

#[test]
fn schema_prints_a_json_schema_of_the_workflow_file() {
    let dir = TestDir::new();
    let mut command = dir.shiphat();
    command.arg("schema");
    let run = Run::of(command);
    assert_eq!(run.code, 0);
    let schema: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(schema["properties"]["steps"].is_object(), "{schema}");
}

#[test]
fn the_compile_cache_is_used_and_a_corrupt_entry_is_rebuilt() {
    let dir = TestDir::new();
    let cache = dir.path().join("cache");
    let file = dir.write(
        "wf.yaml",
        "name: cache\nsteps:\n  - id: one\n    uses: noop\n",
    );
    let run_with_cache = || {
        let mut command = dir.shiphat();
        command
            .env("SHIPHAT_CACHE_DIR", &cache)
            .args(["run", "--json"])
            .arg(&file);
        Run::of(command)
    };
    assert_eq!(run_with_cache().code, 0);
    let with_extension = |extension: &str| -> Vec<_> {
        std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == extension))
            .collect()
    };
    // The machine code, and beside it what `describe()` answered for it (and the plugin file's
    // digest, by its metadata, once the file has been left alone for a few seconds).
    let entries = with_extension("cwasm");
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(with_extension("describe").len(), 1);
    // Corrupt the entry: flip a byte in the middle. It must be dropped, not loaded.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    let run = run_with_cache();
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_ne!(
        std::fs::read(&entries[0]).unwrap(),
        bytes,
        "the corrupt entry was not rebuilt"
    );
    // Garbage of another origin in its place: also rebuilt.
    std::fs::write(&entries[0], b"not a cache entry").unwrap();
    assert_eq!(run_with_cache().code, 0);
}

#[test]
fn a_pinned_digest_is_verified_before_loading() {
    let dir = TestDir::new();
    let bytes = std::fs::read(support::plugin("noop")).unwrap();
    let digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let good = format!("name: pinned\nsteps:\n  - id: one\n    uses: noop@sha256:{digest}\n");
    assert_eq!(dir.run(&good, &[]).code, 0);
    let wrong = format!(
        "name: pinned\nsteps:\n  - id: one\n    uses: noop@sha256:{}\n",
        "0".repeat(64)
    );
    let run = dir.run(&wrong, &[]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("does not match its pinned digest"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&digest), "{}", run.stderr);
}

#[test]
fn a_plugin_path_relative_to_the_workflow_is_found() {
    let dir = TestDir::new();
    std::fs::create_dir_all(dir.path().join("flows/plugins")).unwrap();
    std::fs::copy(
        support::plugin("noop"),
        dir.path().join("flows/plugins/mine.wasm"),
    )
    .unwrap();
    let file = dir.write(
        "flows/wf.yaml",
        "name: local\nsteps:\n  - id: one\n    uses: ./plugins/mine.wasm\n",
    );
    let mut command = dir.shiphat();
    command.args(["run", "--json"]).arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn the_human_view_shows_each_step_and_a_summary() {
    let dir = TestDir::new();
    let file = dir.write("wf.yaml", "name: human\nsteps:\n  - id: one\n    name: Say hello\n    uses: echo\n    with: { message: hello there }\n");
    let mut command = dir.shiphat();
    command.arg("run").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("✓ Say hello"), "{}", run.stdout);
    assert!(run.stdout.contains("echo: hello there"), "{}", run.stdout);
    assert!(run.stdout.contains("one │ hello there"), "{}", run.stdout);
    assert!(run.stdout.contains("succeeded in"), "{}", run.stdout);
    // Not a terminal: no colour codes.
    assert!(!run.stdout.contains('\u{1b}'), "{:?}", run.stdout);
}

/// Regression: `--token` required `--server`, so an exported SHIPHAT_TOKEN (set for the daemon
/// commands) made every local `shiphat run` fail with a usage error.
#[test]
fn an_exported_token_does_not_stop_a_local_run() {
    let dir = TestDir::new();
    let file = dir.write(
        "wf.yaml",
        "name: local\nsteps:\n  - id: one\n    uses: noop\n",
    );
    let mut command = dir.shiphat();
    command
        .env("SHIPHAT_TOKEN", "a-token-for-the-daemon")
        .args(["run", "--json"])
        .arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.finished()["status"], "succeeded");
}

/// A deploy of release 2 over release 1 whose verify step is `verify` (YAML of one step),
/// with a rollback to the release this run replaced and a `finally` that leaves a trace.
fn guarded_deploy(verify: &str, rollback_extra: &str) -> String {
    format!(
        r#"name: guarded
steps:
  - id: deploy
    uses: deployer
    with: {{ strategy: symlink, source: build, target: site, release: "2" }}
    allow: {{ read: [build], write: [site] }}
{verify}
on_failure:
  - id: rollback
    uses: deployer
    if: steps.deploy.status == 'succeeded'
    with: {{ strategy: symlink, action: rollback, target: site, release: "${{{{ steps.deploy.outputs.previous_release }}}}" }}
    allow: {{ write: [site] }}
{rollback_extra}
finally:
  - id: notify
    uses: deployer
    with: {{ strategy: symlink, source: build, target: notified, release: "1" }}
    allow: {{ read: [build], write: [notified] }}
"#
    )
}

/// A test directory with release 1 live in `site` and release 2 built.
fn release_1_live() -> TestDir {
    let dir = TestDir::new();
    dir.write("build/index.html", "<h1>1</h1>");
    let first = dir.run(
        "name: first\nsteps:\n  - id: deploy\n    uses: deployer\n    with: { strategy: symlink, source: build, target: site, release: \"1\" }\n    allow: { read: [build], write: [site] }\n",
        &[],
    );
    assert_eq!(first.code, 0, "{}", first.stderr);
    dir.write("build/index.html", "<h1>2</h1>");
    dir
}

fn live_release(dir: &TestDir) -> std::path::PathBuf {
    std::fs::read_link(dir.path().join("site/current")).expect("`current` is a symlink")
}

/// Regression: `shiphat run deploy.yaml | head -5` panicked on EPIPE ("failed printing to
/// stdout: Broken pipe") and exited 101 with the bad release live: verify, the rollback and
/// `finally` never ran.
#[test]
fn a_closed_output_never_stops_a_run() {
    let verify = "  - id: verify\n    uses: echo\n    needs: deploy\n    with: { fail: error ratio breached }\n";
    for (json, close_stdout, close_stderr) in [
        (false, true, false),
        (true, true, false),
        (false, false, true),
        (false, true, true),
    ] {
        let dir = release_1_live();
        let file = dir.write("deploy.yaml", guarded_deploy(verify, ""));
        let mut command = dir.shiphat();
        command.arg("run").arg(&file);
        if json {
            command.arg("--json");
        }
        let case =
            format!("json {json}, stdout closed {close_stdout}, stderr closed {close_stderr}");
        let (code, stderr) = support::run_with_closed_output(command, close_stdout, close_stderr);
        assert!(!stderr.contains("panicked"), "{case}: {stderr}");
        assert_eq!(
            code, 1,
            "{case}: the run fails on verify and ends normally: {stderr}"
        );
        assert_eq!(
            live_release(&dir),
            std::path::Path::new("releases/1"),
            "{case}: the rollback ran"
        );
        assert!(
            dir.path().join("notified/current").exists(),
            "{case}: finally ran"
        );
    }
}

/// Regression: `schema`, `plugin inspect` and `plugin test` panicked on a closed stdout.
#[test]
fn every_command_survives_a_closed_stdout() {
    let dir = TestDir::new();
    let echo = support::plugin("echo");
    let echo = echo.to_str().unwrap();
    let commands: [&[&str]; 5] = [
        &["schema"],
        &["plugin", "inspect", echo],
        &["plugin", "inspect", "--json", echo],
        &["plugin", "test", echo, "--with", r#"{"message":"hi"}"#],
        &["plugin", "test", "--json", echo],
    ];
    for args in commands {
        let mut command = dir.shiphat();
        command.args(args);
        let (code, stderr) = support::run_with_closed_output(command, true, false);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(code, 0, "{args:?}: {stderr}");
    }
}

fn finished<'a>(events: &'a [serde_json::Value], step: &str) -> &'a serde_json::Value {
    events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
        .unwrap_or_else(|| panic!("no step_finished for `{step}`: {events:?}"))
}

const SLOW_VERIFY: &str = "  - id: verify\n    uses: misbehave\n    needs: deploy\n    with: { mode: sleep, ms: 60000 }\n";

/// Regression: Ctrl-C (or SIGTERM) during verify skipped `on_failure` and `finally` and left
/// the unverified release live, with no warning.
#[test]
fn ctrl_c_cancels_the_step_and_runs_the_safety_net() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        let dir = release_1_live();
        let mut run = LiveRun::start(&dir, "deploy.yaml", &guarded_deploy(SLOW_VERIFY, ""));
        run.wait_started("verify");
        let sent = std::time::Instant::now();
        run.signal(signal);
        let (code, events, stderr) = run.finish();
        assert!(
            sent.elapsed() < Duration::from_secs(30),
            "the cancelled step ends at once"
        );
        assert_eq!(code, 1, "signal {signal}: {stderr}");
        assert!(
            stderr.contains("on_failure and finally still run"),
            "{stderr}"
        );
        assert_eq!(finished(&events, "verify")["status"], "cancelled");
        assert_eq!(finished(&events, "rollback")["status"], "succeeded");
        assert_eq!(finished(&events, "notify")["status"], "succeeded");
        let end = events
            .iter()
            .find(|e| e["event"] == "run_finished")
            .unwrap();
        assert_eq!(end["status"], "cancelled");
        assert!(
            events.iter().any(|e| e["event"] == "log"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("the run was cancelled; running on_failure"))),
            "the output says the safety net runs: {events:?}"
        );
        assert_eq!(live_release(&dir), std::path::Path::new("releases/1"));
    }
}

/// A second Ctrl-C aborts at once, the safety net included, and says what was left.
#[test]
fn a_second_ctrl_c_aborts_and_says_what_was_left() {
    let dir = release_1_live();
    let slow_rollback =
        "  - id: slow-rollback\n    uses: misbehave\n    with: { mode: sleep, ms: 60000 }\n";
    let mut run = LiveRun::start(
        &dir,
        "deploy.yaml",
        &guarded_deploy(SLOW_VERIFY, slow_rollback),
    );
    run.wait_started("verify");
    run.signal(libc::SIGINT);
    run.wait_started("slow-rollback");
    let sent = std::time::Instant::now();
    run.signal(libc::SIGINT);
    let (code, events, stderr) = run.finish();
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "an abort is prompt"
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(finished(&events, "slow-rollback")["status"], "cancelled");
    assert!(stderr.contains("aborted"), "{stderr}");
    assert!(
        stderr.contains("slow-rollback (on_failure): stopped while running"),
        "{stderr}"
    );
    assert!(stderr.contains("notify (finally): never ran"), "{stderr}");
}

/// Regression: `if: ${{ steps.qa.status == 'success' }}` (GitHub's word) passed `validate`,
/// skipped the deploy on every run, and the run said "✓ succeeded".
#[test]
fn validate_refuses_a_status_no_step_ever_has() {
    let dir = TestDir::new();
    let file = dir.write(
        "deploy.yaml",
        "name: gh-habit\nsteps:\n  - id: qa\n    uses: echo\n  - id: deploy\n    uses: echo\n    needs: qa\n    if: ${{ steps.qa.status == 'success' }}\n  - id: notify\n    uses: echo\n    needs: deploy\n    if: \"'Failure' != steps.deploy.status && success()\"\n",
    );
    let mut command = dir.shiphat();
    command.arg("validate").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("`steps.qa.status` is never 'success'")
            && run.stderr.contains("did you mean 'succeeded'?"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("`steps.deploy.status` is never 'Failure'")
            && run.stderr.contains("did you mean 'failed'?"),
        "statuses compare without regard to case, but 'failure' is still not one: {}",
        run.stderr
    );
}

/// Regression: a run whose deploy was skipped printed "✓ succeeded" like any other.
#[test]
fn a_run_that_skipped_its_deploy_says_nothing_was_deployed() {
    let dir = TestDir::new();
    let yaml = "name: skipped\ninputs:\n  go: { type: bool, default: false }\nsteps:\n  - id: qa\n    uses: echo\n  - id: deploy\n    uses: deployer\n    needs: qa\n    if: inputs.go\n    with: { strategy: symlink, source: build, target: site, release: \"1\" }\n    allow: { read: [build], write: [site] }\n";
    let file = dir.write("deploy.yaml", yaml);
    let mut command = dir.shiphat();
    command.arg("run").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("but nothing was deployed or changed")
            && run
                .stdout
                .contains("`deploy` skipped because its `if` condition `inputs.go` is false"),
        "{}",
        run.stdout
    );
}

/// Regression: `plugin inspect NAME` wanted a file path, unlike `uses: NAME`; and `--no-cache`
/// clashed with an exported SHIPHAT_CACHE_DIR instead of winning over it.
#[test]
fn plugin_inspect_takes_a_name_and_no_cache_beats_the_environment() {
    let dir = TestDir::new();
    let mut command = dir.shiphat();
    command.args(["plugin", "inspect", "--json", "echo", "--no-cache"]);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let info: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(info["name"], "echo");
    // Regression: a first compile (17 s for a Python plugin) showed nothing at all.
    assert!(
        run.stderr.contains("compiling echo.wasm (") && run.stderr.contains("KB)"),
        "{}",
        run.stderr
    );

    let mine = dir.path().join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::copy(support::plugin("echo"), mine.join("my-echo.wasm")).unwrap();
    let mut command = dir.shiphat();
    command
        .env_remove("SHIPHAT_PLUGIN_PATH")
        .args(["plugin", "inspect", "my-echo", "--plugin-path"])
        .arg(&mine);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("echo"), "{}", run.stdout);

    let mut command = dir.shiphat();
    command
        .args(["plugin", "inspect", "my-ecko", "--plugin-path"])
        .arg(&mine);
    let run = Run::of(command);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("did you mean `my-echo`?"),
        "{}",
        run.stderr
    );
}

/// Regression: `plugin test` pointed schema errors at an invented `plugin-test.yaml:1:189`.
#[test]
fn plugin_test_points_errors_at_the_flags() {
    let dir = TestDir::new();
    let mut command = dir.shiphat();
    command
        .args(["plugin", "test"])
        .arg(support::plugin("deployer"))
        .args(["--with", r#"{"strategy":"symlink","targt":"www"}"#]);
    let run = Run::of(command);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(!run.stderr.contains("plugin-test.yaml"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("--with: `with`: unknown key `targt`; did you mean `target`?"),
        "{}",
        run.stderr
    );
}

/// `run.dry_run` lets a post-deploy check skip itself in a dry run.
#[test]
fn run_dry_run_is_available_to_expressions() {
    let dir = TestDir::new();
    let yaml = "name: dry\nsteps:\n  - id: smoke\n    uses: echo\n    if: ${{ !run.dry_run }}\n  - id: say\n    uses: echo\n    with: { message: \"dry ${{ run.dry_run }}\" }\n";
    let run = dir.run(yaml, &["--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status("smoke"), "skipped");
    assert!(
        run.logs("say").contains(&"dry true"),
        "{:?}",
        run.logs("say")
    );
    let run = dir.run(yaml, &[]);
    assert_eq!(run.status("smoke"), "succeeded");
}

/// Regression: `if:` without a status function ran the step whatever its `needs` ended with,
/// so a deploy with `needs: test` and `if: inputs.environment == 'production'` ran after the
/// tests failed. GitHub Actions implies `success() &&`; so does shiphat now.
#[test]
fn an_if_implies_success_and_status_functions_react_to_a_failure() {
    let dir = TestDir::new();
    let yaml = r#"name: gated
inputs:
  environment: { type: string, default: Production }
  replicas: { type: number, default: 2 }
steps:
  - id: test
    uses: echo
    with: { fail: "2 tests failed" }
  - id: deploy
    uses: echo
    needs: test
    if: inputs.environment == 'production'
  - id: report
    uses: echo
    needs: test
    if: failure() && steps.test.status == 'failed'
  - id: always
    uses: echo
    needs: test
    if: ${{ always() && inputs.replicas == '2' }}
  - id: only_on_success
    uses: echo
    needs: test
    if: success()
on_failure:
  - id: rollback
    uses: echo
    if: steps.deploy.status == 'succeeded'
  - id: page
    uses: echo
    if: failure()
"#;
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.status("deploy"), "skipped");
    assert!(
        run.logs("deploy")
            .contains(&"skipped: a step it needs did not succeed"),
        "{:?}",
        run.logs("deploy")
    );
    assert_eq!(run.status("report"), "succeeded");
    assert_eq!(
        run.status("always"),
        "succeeded",
        "'2' == 2 and 'Production' == 'production'"
    );
    assert_eq!(run.status("only_on_success"), "skipped");
    assert_eq!(run.status("rollback"), "skipped", "nothing was deployed");
    assert_eq!(run.status("page"), "succeeded");

    // With the tests green, the case-insensitive comparison lets the deploy run.
    let yaml = yaml.replace("    with: { fail: \"2 tests failed\" }\n", "");
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.status("deploy"), "succeeded");
    assert_eq!(run.status("report"), "skipped");
    assert_eq!(run.status("only_on_success"), "succeeded");
}

/// `if: always()` and `if: cancelled()` steps of `steps` still run after a Ctrl-C, as in
/// GitHub Actions; the rest of `steps` is cancelled.
#[test]
fn always_and_cancelled_steps_run_after_a_cancel() {
    let dir = release_1_live();
    let yaml = r#"name: cancelled
steps:
  - id: slow
    uses: misbehave
    with: { mode: sleep, ms: 60000 }
  - id: next
    uses: echo
    needs: slow
  - id: cleanup
    uses: echo
    needs: slow
    if: always()
  - id: tell
    uses: echo
    needs: slow
    if: cancelled()
"#;
    let mut run = LiveRun::start(&dir, "deploy.yaml", yaml);
    run.wait_started("slow");
    run.signal(libc::SIGINT);
    let (code, events, stderr) = run.finish();
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(finished(&events, "slow")["status"], "cancelled");
    assert_eq!(finished(&events, "next")["status"], "cancelled");
    assert_eq!(finished(&events, "cleanup")["status"], "succeeded");
    assert_eq!(finished(&events, "tell")["status"], "succeeded");
}

/// `validate` says, once and with the line, where a workflow written before shiphat took
/// GitHub's rules now means something else.
#[test]
fn validate_notes_where_github_rules_change_a_meaning() {
    let dir = TestDir::new();
    let file = dir.write(
        "old.yaml",
        r#"name: old
inputs:
  replicas: { type: number, default: 2 }
  version: { type: string }
steps:
  - id: qa
    uses: echo
  - id: deploy
    uses: echo
    needs: qa
    if: steps.qa.status == 'failed' || inputs.replicas == '2'
    with:
      message: "${{ inputs.version || 'latest' }}"
  - id: tag
    uses: echo
    needs: qa
    if: success() && steps.qa.outputs.tag != ''
"#,
    );
    let mut command = dir.shiphat();
    command.arg("validate").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "notes are not errors: {}", run.stderr);
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .collect();
    let at = |line: &str, what: &str| {
        warnings
            .iter()
            .filter(|w| w.contains(&format!("old.yaml:{line}:")) && w.contains(what))
            .count()
    };
    assert_eq!(at("11", "now means `success() &&"), 1, "{warnings:#?}");
    assert_eq!(
        at("11", "compares a number with a string"),
        1,
        "{warnings:#?}"
    );
    assert_eq!(at("13", "gives one of its operands"), 1, "{warnings:#?}");
    assert_eq!(
        at("17", "is now false when the value is missing"),
        1,
        "{warnings:#?}"
    );
    assert_eq!(warnings.len(), 4, "{warnings:#?}");

    let mut command = dir.shiphat();
    command.arg("validate").arg("--explain-if").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    for line in [
        "old.yaml:6: steps `qa` runs when `success()`",
        "old.yaml:8: steps `deploy` after qa runs when `success() && (steps.qa.status == 'failed' || inputs.replicas == '2')`",
        "old.yaml:14: steps `tag` after qa runs when `success() && steps.qa.outputs.tag != ''`",
    ] {
        assert!(run.stderr.contains(line), "no `{line}` in {}", run.stderr);
    }
}

/// A build, an approval, and a rollback that says how the approval ended.
const APPROVAL: &str = r#"
name: ask
steps:
  - id: build
    uses: echo
    with: { message: built }
  - id: decide
    name: Ship it
    needs: build
    approval:
      message: "ship build ${{ run.id }}?"
      approvers: { roles: [deployer] }
on_failure:
  - id: rollback
    uses: echo
    with: { message: "rolled back: ${{ steps.decide.outputs.decision }} ${{ steps.decide.outputs.comment }}" }
"#;

#[test]
fn an_approval_without_a_terminal_fails_and_says_how_to_approve() {
    // Issue 18: a one-shot run with nobody at a terminal cannot ask; the step fails, the
    // safety net runs, and the message names `--approve STEP` and the daemon's ways.
    let dir = TestDir::new();
    let run = dir.run(APPROVAL, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("decide");
    assert_eq!(kind, "setup");
    for needle in [
        "no terminal to ask",
        "`--approve decide`",
        "role `deployer`",
    ] {
        assert!(message.contains(needle), "no `{needle}` in {message}");
    }
    assert_eq!(run.status("rollback"), "succeeded");
    assert_eq!(run.step("decide")["outputs"]["decision"], "unavailable");
}

#[test]
fn approve_on_the_command_line_approves_in_advance_and_names_only_approval_steps() {
    let dir = TestDir::new();
    let run = dir.run(APPROVAL, &["--approve", "decide"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let outputs = &run.step("decide")["outputs"];
    assert_eq!(outputs["decision"], "approved");
    assert_eq!(outputs["comment"], "approved in advance with --approve");
    assert!(
        !run.events.iter().any(|e| e["step"] == "rollback"),
        "on_failure did not run: {}",
        run.stdout
    );

    // A step that is not an approval, or does not exist, is refused before anything runs.
    for step in ["build", "nope"] {
        let run = dir.run(APPROVAL, &["--approve", step]);
        assert_eq!(run.code, 2, "{}", run.stderr);
        assert!(
            run.stderr.contains(&format!(
                "has no approval step `{step}`; its approval steps are decide"
            )),
            "{}",
            run.stderr
        );
        assert!(run.events.is_empty(), "nothing ran: {:?}", run.events);
    }
}

/// Runs `shiphat ARGS` on a pseudo-terminal (util-linux `script`), typing `typed`; returns
/// the exit code and everything the terminal showed.
fn on_a_terminal(dir: &TestDir, args: &[&str], typed: &str) -> (i32, String) {
    use std::io::{Read, Write};
    let shiphat = dir.shiphat();
    let line = std::iter::once(env!("CARGO_BIN_EXE_shiphat"))
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut script = std::process::Command::new("script");
    script
        .args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .current_dir(dir.path());
    for (key, value) in shiphat.get_envs() {
        match value {
            Some(value) => script.env(key, value),
            None => script.env_remove(key),
        };
    }
    let mut child = script
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs the test on a terminal; install bsdutils");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(typed.as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut shown = String::new();
        stdout.read_to_string(&mut shown).unwrap();
        shown
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run on a terminal never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

#[test]
fn a_run_on_a_terminal_asks_the_person_at_the_keyboard() {
    // Issue 18: y approves; anything else rejects, with the reason typed after it, and the
    // rollback reads it.
    let dir = TestDir::new();
    dir.write("ask.yaml", APPROVAL);
    let (code, shown) = on_a_terminal(&dir, &["run", "ask.yaml"], "y\n");
    assert_eq!(code, 0, "{shown}");
    assert!(shown.contains("needs approval (60m at most)"), "{shown}");
    assert!(shown.contains("ship build "), "{shown}");
    assert!(shown.contains("Approve? [y/N]"), "{shown}");
    assert!(shown.contains("approved by "), "{shown}");

    let (code, shown) = on_a_terminal(&dir, &["run", "ask.yaml"], "n\nnot on a Friday\n");
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("Why (optional)?"), "{shown}");
    assert!(shown.contains("(\"not on a Friday\")"), "{shown}");
    assert!(
        shown.contains("rolled back: rejected not on a Friday"),
        "{shown}"
    );
}

/// Issue 20: `shiphat explain` writes each workflow's handbook. The expected texts are in
/// tests/explain/, one `NAME.md` per workflow (`workflows/*.yaml` and the cases beside them);
/// `BLESS=1` rewrites them after a deliberate change.
#[test]
fn explain_writes_the_handbook_of_every_example_workflow() {
    let root = support::root();
    let mut files: Vec<std::path::PathBuf> = ["workflows", "tests/explain"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    let dir = TestDir::new();
    let mut failures = Vec::new();
    for file in files {
        let mut command = dir.shiphat();
        command.arg("explain").arg(&file);
        let run = Run::of(command);
        assert_eq!(run.code, 0, "{}: {}", file.display(), run.stderr);
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        failures.extend(support::golden(
            &format!("tests/explain/{name}.md"),
            &run.stdout,
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn explain_refuses_a_broken_workflow_as_validate_does() {
    let dir = TestDir::new();
    let file = dir.write(
        "bad.yaml",
        "name: bad\nsteps:\n  - id: x\n    uses: echo\n    with: { mesage: hi }\n",
    );
    let mut command = dir.shiphat();
    command.arg("explain").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("mesage"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

/// Issue 20: `validate --against` prints what each step may now reach that it could not, and
/// `--deny-widening` fails CI on it, so that a widened grant gets a second review.
#[test]
fn validate_against_an_older_version_shows_grant_changes_and_can_deny_widening() {
    let dir = TestDir::new();
    let old = "name: site\nsteps:\n  - id: deploy\n    uses: echo\n    allow: { read: [build], write: [www] }\n";
    let wider = "name: site\nsteps:\n  - id: deploy\n    uses: echo\n    allow: { read: [build], write: [www], http: [hooks.example.com], secrets: [TOKEN] }\n  - id: notify\n    uses: echo\n    allow: { env: { CHANNEL: deploys } }\n";
    std::fs::create_dir_all(dir.path().join("build")).unwrap();
    std::fs::create_dir_all(dir.path().join("www")).unwrap();
    let old_file = dir.write("old.yaml", old);
    let file = dir.write("site.yaml", wider);
    let validate = |args: &[&str]| {
        let mut command = dir.shiphat();
        command.arg("validate").args(args);
        Run::of(command)
    };

    let run = validate(&[
        file.to_str().unwrap(),
        "--against",
        old_file.to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("step `deploy`:\n    + http `hooks.example.com`\n    + secret `TOKEN`\n"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("step `notify` (new step):\n    plugin `echo`\n    + env `CHANNEL`\n"),
        "{}",
        run.stdout
    );
    let denied = validate(&[
        file.to_str().unwrap(),
        "--against",
        old_file.to_str().unwrap(),
        "--deny-widening",
    ]);
    assert_eq!(denied.code, 1, "{}", denied.stdout);
    assert!(
        denied.stdout.contains("grants widened"),
        "{}",
        denied.stdout
    );
    // The other way round only narrows: no second review needed.
    let narrowed = validate(&[
        old_file.to_str().unwrap(),
        "--against",
        file.to_str().unwrap(),
        "--deny-widening",
    ]);
    assert_eq!(narrowed.code, 0, "{}", narrowed.stdout);
    assert!(
        narrowed.stdout.contains("grants narrowed only"),
        "{}",
        narrowed.stdout
    );

    // Against git: the committed version is the old one.
    let git = |args: &[&str]| support::git(dir.path(), args);
    git(&["init", "-q"]);
    std::fs::write(&file, old).unwrap();
    git(&["add", "site.yaml"]);
    git(&["commit", "-q", "-m", "old"]);
    std::fs::write(&file, wider).unwrap();
    let run = validate(&["site.yaml", "--against-git", "HEAD", "--deny-widening"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("+ secret `TOKEN`"), "{}", run.stdout);
    // A file the revision did not have is all new.
    let fresh = dir.write("fresh.yaml", wider);
    let run = validate(&[fresh.to_str().unwrap(), "--against-git", "HEAD"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("new since `HEAD`"), "{}", run.stdout);
    assert!(
        run.stdout.contains("step `deploy` (new step)"),
        "{}",
        run.stdout
    );
    // `--deny-widening` alone says what it needs.
    let alone = validate(&[file.to_str().unwrap(), "--deny-widening"]);
    assert_eq!(alone.code, 2, "{}", alone.stderr);
    assert!(alone.stderr.contains("--against"), "{}", alone.stderr);
}

/// Every line of a `--json` run's stdout is one JSON value: a progress line never lands there.
fn json_lines(run: &Run) {
    for line in run.stdout.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON: {line}\n{}",
            run.stdout
        );
    }
}

#[test]
fn a_first_compile_says_so_on_stderr_and_validate_warm_takes_it_off_the_deploy_path() {
    // A first compile (24 s for the Python example) fell on whichever deploy came first.
    let dir = TestDir::new();
    let yaml = "name: w\nsteps:\n  - id: a\n    uses: echo\n    with: { message: hi }\n  - id: b\n    uses: noop\n    needs: a\n";
    let file = dir.write("deploy.yaml", yaml);
    let cache = dir.path().join("cache");
    let shiphat = || {
        let mut command = dir.shiphat();
        command.env("SHIPHAT_CACHE_DIR", &cache);
        command
    };

    // A cache miss in a run: one plain line per plugin on stderr, and stdout stays JSON Lines.
    let mut command = shiphat();
    command.arg("run").arg(&file).arg("--json");
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("compiling echo.wasm (")
            && run.stderr.contains("compiling noop.wasm (")
            && run.stderr.contains("KB), first run only"),
        "{}",
        run.stderr
    );
    json_lines(&run);

    // `validate --warm` on a fresh cache compiles each plugin once, saying so for each.
    std::fs::remove_dir_all(&cache).unwrap();
    let mut command = shiphat();
    command.args(["validate", "--warm"]).arg(&file).arg(&file);
    let warm = Run::of(command);
    assert_eq!(warm.code, 0, "{}", warm.stderr);
    assert_eq!(
        warm.stderr
            .matches("compiled into the compile cache")
            .count(),
        2,
        "{}",
        warm.stderr
    );
    assert!(
        warm.stderr.contains("warm: echo.wasm (") && warm.stderr.contains("compiling echo.wasm ("),
        "{}",
        warm.stderr
    );
    let mut command = shiphat();
    command.args(["validate", "--warm"]).arg(&file);
    let again = Run::of(command);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stderr.matches("already in the compile cache").count(),
        2,
        "{}",
        again.stderr
    );
    assert!(!again.stderr.contains("compiling"), "{}", again.stderr);

    // After it, the first run compiles nothing.
    let mut command = shiphat();
    command.arg("run").arg(&file).arg("--json");
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(!run.stderr.contains("compiling"), "{}", run.stderr);
    json_lines(&run);

    // Nothing to warm without a cache.
    let mut command = shiphat();
    command
        .args(["validate", "--warm", "--no-cache"])
        .arg(&file);
    let refused = Run::of(command);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--no-cache"), "{}", refused.stderr);
}
