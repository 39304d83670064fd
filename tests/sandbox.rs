//! The sandbox and its limits, through the real `shiphat` binary and real components: a
//! plugin that misbehaves fails its step, never the engine, and reaches nothing it was not
//! granted.

mod support;

use std::time::Duration;

use support::{HttpServer, TestDir};

fn misbehave(step: &str, mode: &str, extra: &str) -> String {
    format!("  - id: {step}\n    uses: misbehave\n    with: {{ mode: {mode} }}\n{extra}")
}

#[test]
fn a_plugin_that_loops_forever_times_out_while_a_parallel_step_finishes() {
    let dir = TestDir::new();
    let yaml = format!(
        "name: loop\nsteps:\n{}  - id: beside\n    uses: echo\n    with: {{ message: fine, sleep_ms: 200 }}\n",
        misbehave("spin", "loop", "    timeout: 2s\n")
    );
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert_eq!(run.error("spin").0, "timeout");
    assert!(
        run.error("spin").1.contains("2s"),
        "{:?}",
        run.error("spin")
    );
    assert_eq!(run.status("beside"), "succeeded");
    let took = run.step("spin")["duration_ms"].as_f64().unwrap();
    assert!(
        (2000.0..3000.0).contains(&took),
        "the loop was stopped after {took} ms, not within 2s + 1s"
    );
    // The parallel step was not held up by the busy one.
    let beside = run.step("beside")["duration_ms"].as_f64().unwrap();
    assert!(beside < 1500.0, "the parallel step took {beside} ms");
}

#[test]
fn a_plugin_that_blocks_in_a_host_call_times_out() {
    let dir = TestDir::new();
    let yaml = format!(
        "name: sleepy\nsteps:\n{}",
        "  - id: nap\n    uses: misbehave\n    with: { mode: sleep, ms: 60000 }\n    timeout: 1s\n"
    );
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.error("nap").0, "timeout");
    assert!(run.wall < Duration::from_secs(10), "took {:?}", run.wall);
}

#[test]
fn a_plugin_that_allocates_without_end_hits_the_memory_limit() {
    let dir = TestDir::new();
    let run = dir.run(
        &format!(
            "name: bloat\nsteps:\n{}",
            misbehave("bloat", "alloc", "    memory: 64MiB\n")
        ),
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("bloat");
    assert_eq!(kind, "memory", "{message}");
    assert!(message.contains("64MiB"), "{message}");
}

#[test]
fn unbounded_recursion_is_a_stack_overflow() {
    let dir = TestDir::new();
    let run = dir.run(
        &format!("name: deep\nsteps:\n{}", misbehave("deep", "recurse", "")),
        &[],
    );
    assert_eq!(
        run.error("deep").0,
        "stack_overflow",
        "{:?}",
        run.error("deep")
    );
}

#[test]
fn a_flood_of_stdout_is_truncated_and_memory_stays_bounded() {
    let dir = TestDir::new();
    // Two gibibytes, written through WASI stdout.
    let yaml = "name: flood\nsteps:\n  - id: flood\n    uses: misbehave\n    with: { mode: flood, bytes: 2147483648 }\n    log_limit: 64KiB\n";
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.step("flood")["outputs"]["written"], 2147483648u64);
    let logs = run.logs("flood");
    assert!(
        logs.iter()
            .any(|l| l.contains("stdout truncated") && l.contains("64KiB")),
        "{:?}",
        &logs[logs.len().saturating_sub(3)..]
    );
    assert!(logs.iter().any(|l| l.contains("bytes of stdout dropped")));
    let kept: usize = logs.iter().map(|l| l.len()).sum();
    assert!(kept < 200 * 1024, "kept {kept} bytes of log");
    assert!(
        run.max_rss_kib < 300 * 1024,
        "the engine peaked at {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn a_panicking_plugin_fails_with_the_panic_message() {
    let dir = TestDir::new();
    let run = dir.run(
        &format!("name: panic\nsteps:\n{}", misbehave("boom", "panic", "")),
        &[],
    );
    let (kind, message) = run.error("boom");
    assert_eq!(kind, "panic");
    assert!(message.contains("misbehave: deliberate panic"), "{message}");
}

#[test]
fn outputs_that_are_not_a_json_object_or_too_large_fail_the_step() {
    let dir = TestDir::new();
    let yaml = format!(
        "name: outputs\nsteps:\n{}{}{}",
        misbehave("text", "not_json", "    continue_on_error: true\n"),
        misbehave("list", "not_object", "    continue_on_error: true\n"),
        misbehave("huge", "big_output", "    continue_on_error: true\n"),
    );
    let run = dir.run(&yaml, &[]);
    assert_eq!(
        run.error("text"),
        (
            "bad_output",
            "bad output: the plugin's outputs are not valid JSON: expected ident at line 1 column 2"
        )
    );
    assert_eq!(
        run.error("list"),
        (
            "bad_output",
            "bad output: the plugin's outputs must be a JSON object, got an array"
        )
    );
    let (kind, message) = run.error("huge");
    assert_eq!(kind, "bad_output");
    assert!(
        message.contains("over the step's output_limit of 1MiB"),
        "{message}"
    );
}

#[test]
fn nothing_is_reachable_without_a_grant() {
    let dir = TestDir::new();
    dir.write("granted/visible.txt", "in the grant");
    dir.write("private/secret.txt", "outside the grant");
    let server = HttpServer::start();
    let url = format!("http://{}/", server.addr);
    let yaml = format!(
        r#"name: probe
steps:
  - id: probe
    uses: probe
    with:
      read: [granted/visible.txt, private/secret.txt, /etc/hostname]
      env: true
      secrets: [GRANTED_TOKEN, OTHER_TOKEN]
      http: ["{url}"]
    allow:
      read: [granted]
      env: {{ ONLY_THIS: "yes" }}
      secrets: [GRANTED_TOKEN]
"#
    );
    let file = dir.write("workflow.yaml", yaml);
    let mut command = dir.shiphat();
    command
        .arg("run")
        .arg(&file)
        .arg("--json")
        .env("GRANTED_TOKEN", "granted-value-123")
        .env("OTHER_TOKEN", "other-value-456")
        .env("HOME_SECRET_ENV", "leak");
    let run = support::Run::of(command);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let outputs = &run.step("probe")["outputs"];
    assert_eq!(
        outputs["read"]["granted/visible.txt"]["ok"], true,
        "{outputs}"
    );
    assert_eq!(
        outputs["read"]["private/secret.txt"]["ok"], false,
        "{outputs}"
    );
    assert_eq!(outputs["read"]["/etc/hostname"]["ok"], false, "{outputs}");
    // The environment is exactly what was granted: nothing inherited.
    assert_eq!(outputs["env"], serde_json::json!({ "ONLY_THIS": "yes" }));
    // The granted secret is readable, and redacted from the outputs; the other one is absent.
    assert_eq!(outputs["secrets"]["GRANTED_TOKEN"], "***");
    assert_eq!(outputs["secrets"]["OTHER_TOKEN"], serde_json::Value::Null);
    assert!(
        !run.stdout.contains("granted-value-123"),
        "a secret value leaked into the events"
    );
    // HTTP to a host that is not granted is refused before any connection is made.
    assert_eq!(outputs["http"][&url]["ok"], false, "{outputs}");
    assert!(
        outputs["http"][&url]["error"]
            .as_str()
            .unwrap()
            .contains("denied"),
        "{outputs}"
    );
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 0);
    let logs = run.logs("probe");
    assert!(
        logs.iter()
            .any(|l| l.contains("refused") && l.contains("allow.http")),
        "{logs:?}"
    );
    assert!(
        logs.iter()
            .any(|l| l.contains("secret `OTHER_TOKEN` refused")),
        "{logs:?}"
    );
}

#[test]
fn a_granted_host_is_reachable() {
    let dir = TestDir::new();
    let server = HttpServer::start();
    let url = format!("http://{}/", server.addr);
    let yaml = format!(
        "name: http\nsteps:\n  - id: probe\n    uses: probe\n    with: {{ http: [\"{url}\"] }}\n    allow:\n      http: [\"127.0.0.1:{}\"]\n",
        server.addr.port()
    );
    let run = dir.run(&yaml, &[]);
    let outputs = &run.step("probe")["outputs"];
    assert_eq!(outputs["http"][&url]["ok"], true, "{outputs}");
    assert_eq!(outputs["http"][&url]["status"], 200);
    assert_eq!(server.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_write_grant_is_writable_and_a_read_grant_is_not() {
    let dir = TestDir::new();
    dir.write("ro/keep.txt", "x");
    let yaml = "name: write\nsteps:\n  - id: probe\n    uses: probe\n    with: { write: [out/new.txt, ro/new.txt] }\n    allow:\n      write: [out]\n      read: [ro]\n";
    let run = dir.run(yaml, &[]);
    let outputs = &run.step("probe")["outputs"];
    assert_eq!(outputs["write"]["out/new.txt"]["ok"], true, "{outputs}");
    assert_eq!(outputs["write"]["ro/new.txt"]["ok"], false, "{outputs}");
    assert!(dir.path().join("out/new.txt").is_file());
    assert!(!dir.path().join("ro/new.txt").exists());
}

/// Runs one step of a hand-written component with the given `memory` limit.
fn run_component(dir: &TestDir, file: &std::path::Path, memory: &str) -> support::Run {
    let yaml = format!(
        "name: objects\nsteps:\n  - id: hoard\n    uses: {}\n    memory: {memory}\n",
        file.display()
    );
    dir.run(&yaml, &[])
}

#[test]
fn many_memories_together_hit_the_step_memory_limit() {
    // Bug: `memory` capped each linear memory on its own, so 8 memories took 8 times the limit.
    let dir = TestDir::new();
    let file = support::wat::component(
        dir.path(),
        "memories",
        &support::wat::hoarder(8, 256, 0, 0),
        "",
    );
    let run = run_component(&dir, &file, "64MiB");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("hoard");
    assert_eq!(kind, "memory", "{message}");
    assert!(message.contains("64MiB"), "{message}");
    // The same plugin within its limit runs: the sum is what is limited, not the shape.
    let run = run_component(&dir, &file, "256MiB");
    assert_eq!(run.status("hoard"), "succeeded", "{}", run.stderr);
}

#[test]
fn many_tables_together_hit_the_step_memory_limit() {
    // Bug: tables were capped per table in elements and not counted against `memory` at all.
    let dir = TestDir::new();
    let file = support::wat::component(
        dir.path(),
        "tables",
        &support::wat::hoarder(0, 0, 16, 1_000_000),
        "",
    );
    let run = run_component(&dir, &file, "64MiB");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("hoard");
    assert_eq!(kind, "memory", "{message}");
    assert!(message.contains("64MiB"), "{message}");
}

#[test]
fn memories_of_many_core_instances_together_hit_the_step_memory_limit() {
    // Bug: each core instance's memory had the whole limit, so 12 instances took 12 times it.
    let dir = TestDir::new();
    let mut extra = String::from("(core module $bloat (memory 128))\n");
    extra.push_str(&"(core instance (instantiate $bloat))\n".repeat(12));
    let file = support::wat::component(
        dir.path(),
        "instances",
        &support::wat::hoarder(0, 0, 0, 0),
        &extra,
    );
    let run = run_component(&dir, &file, "64MiB");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("hoard");
    assert_eq!(kind, "memory", "{message}");
    assert!(message.contains("64MiB"), "{message}");
}

#[test]
fn too_many_core_instances_memories_or_tables_fail_the_step_by_name() {
    // Bug: a step could create 10,000 instances, memories or tables (wasmtime's default), each
    // costing host memory or gigabytes of address space outside the `memory` limit.
    let dir = TestDir::new();
    let mut instances = String::from("(core module $empty)\n");
    instances.push_str(&"(core instance (instantiate $empty))\n".repeat(600));
    let cases = [
        (
            "instances",
            support::wat::hoarder(0, 0, 0, 0),
            instances,
            "500 instances",
        ),
        (
            "memories",
            support::wat::hoarder(80, 0, 0, 0),
            String::new(),
            "64 memories",
        ),
        (
            "tables",
            support::wat::hoarder(0, 0, 80, 0),
            String::new(),
            "64 tables",
        ),
    ];
    for (name, core, extra, limit) in cases {
        let file = support::wat::component(dir.path(), name, &core, &extra);
        let run = run_component(&dir, &file, "64MiB");
        assert_eq!(run.code, 1, "{name}: {}", run.stderr);
        let (kind, message) = run.error("hoard");
        assert_eq!(kind, "memory", "{name}: {message}");
        assert_eq!(
            message,
            format!(
                "memory limit: the plugin tried to create more than {limit}, the most a step may have"
            ),
            "{name}"
        );
    }
}

/// A secret value long enough that any half of it is recognisable.
const SECRET: &str = "s3cr3t-value-0123456789";

/// Runs `yaml` with the secret `TOKEN` set to [`SECRET`].
fn run_with_secret(dir: &TestDir, yaml: &str) -> support::Run {
    let file = dir.write("workflow.yaml", yaml);
    let mut command = dir.shiphat();
    command
        .arg("run")
        .arg(&file)
        .arg("--json")
        .env("TOKEN", SECRET);
    support::Run::of(command)
}

/// Asserts that no part of [`SECRET`] long enough to matter shows anywhere in the events.
fn assert_no_secret(run: &support::Run) {
    for part in [SECRET, "s3cr3t-v", "e-0123456789"] {
        assert!(
            !run.stdout.contains(part) && !run.stderr.contains(part),
            "`{part}` leaked:\n{}",
            run.stdout
        );
    }
}

#[test]
fn a_secret_across_the_long_line_cut_is_redacted() {
    // Bug: a line force-flushed at 16 KiB was redacted in pieces, so a secret across the cut
    // printed in clear.
    for before in [16 * 1024 - 5, 16 * 1024 - 12] {
        let dir = TestDir::new();
        let yaml = format!(
            "name: cut\nsteps:\n  - id: leak\n    uses: misbehave\n    with: {{ mode: print_secret, secret: TOKEN, size: {before} }}\n    allow:\n      secrets: [TOKEN]\n"
        );
        let run = run_with_secret(&dir, &yaml);
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert_no_secret(&run);
        assert!(
            run.logs("leak").iter().any(|l| l.contains("***")),
            "{before}"
        );
    }
}

#[test]
fn a_secret_cut_by_the_log_limit_is_masked() {
    // Bug: when log_limit cut a line in the middle of a secret, its first half printed in clear.
    let dir = TestDir::new();
    let yaml = "name: cut\nsteps:\n  - id: leak\n    uses: misbehave\n    with: { mode: print_secret, secret: TOKEN, size: 1016 }\n    log_limit: 1KiB\n    allow:\n      secrets: [TOKEN]\n";
    let run = run_with_secret(&dir, yaml);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_secret(&run);
    assert!(
        run.logs("leak").iter().any(|l| l.ends_with("***")),
        "{:?}",
        run.logs("leak")
    );
}

#[test]
fn a_secret_handed_on_through_a_file_is_redacted_in_another_step() {
    // Bug: only a step's own secrets were redacted, so a step that read a secret from a file
    // another step was granted it for printed it in clear.
    let dir = TestDir::new();
    dir.write("shared/token.txt", SECRET);
    let yaml = "name: handoff\nsteps:\n  - id: holder\n    uses: probe\n    with: { secrets: [TOKEN] }\n    allow:\n      secrets: [TOKEN]\n  - id: reader\n    uses: probe\n    needs: holder\n    with: { read: [shared/token.txt] }\n    allow:\n      read: [shared]\n";
    let run = run_with_secret(&dir, yaml);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_no_secret(&run);
    assert_eq!(
        run.step("reader")["outputs"]["read"]["shared/token.txt"]["content"],
        "***"
    );
}

#[test]
fn every_text_a_plugin_returns_is_capped_by_the_output_limit() {
    // Bug: only `outputs` was capped; a summary or an error message of any size went into
    // every event, the store and the web page.
    let dir = TestDir::new();
    let modes = [
        ("summary", "big_summary"),
        ("failure message", "big_failure"),
        ("transient message", "big_transient"),
        ("invalid-config message", "big_invalid_config"),
    ];
    let yaml: String = modes
        .iter()
        .map(|(_, mode)| misbehave(mode, mode, "    continue_on_error: true\n"))
        .collect();
    let run = dir.run(&format!("name: texts\nsteps:\n{yaml}"), &[]);
    for (what, mode) in modes {
        let (kind, message) = run.error(mode);
        assert_eq!(kind, "bad_output", "{mode}: {message}");
        assert_eq!(
            message,
            format!(
                "bad output: the plugin's {what} is 2MiB long, over the step's output_limit of 1MiB"
            )
        );
    }
    assert!(
        run.stdout.len() < 64 * 1024,
        "{} bytes of events",
        run.stdout.len()
    );
}

/// A workflow directory `flow/` whose `releases/r1/esc` is a symlink to `outside/`, beside it,
/// as a release tarball could leave it; `outside/secret.txt` is outside every grant.
fn escaping_release(dir: &TestDir) {
    dir.write("outside/secret.txt", "outside every grant");
    std::fs::create_dir_all(dir.path().join("flow/releases/r1")).unwrap();
    std::os::unix::fs::symlink("../../../outside", dir.path().join("flow/releases/r1/esc"))
        .unwrap();
    std::os::unix::fs::symlink("r1", dir.path().join("flow/releases/current")).unwrap();
}

fn run_in_flow(dir: &TestDir, yaml: &str) -> support::Run {
    let file = dir.write("flow/workflow.yaml", yaml);
    let mut command = dir.shiphat();
    command.arg("run").arg(&file).arg("--json");
    support::Run::of(command)
}

#[test]
fn a_grant_through_a_symlink_out_of_the_workflow_directory_is_refused() {
    // Bug: grant paths were normalised as text, then opened following symlinks, so a symlink a
    // release left behind took a step outside every grant.
    let dir = TestDir::new();
    escaping_release(&dir);
    let absolute = dir.path().join("flow/releases/r1/esc");
    let cases = [
        (
            "read",
            "releases/r1/esc".to_owned(),
            "releases/r1/esc/secret.txt".to_owned(),
        ),
        (
            "read",
            absolute.display().to_string(),
            format!("{}/secret.txt", absolute.display()),
        ),
        (
            "write",
            "releases/r1/esc".to_owned(),
            "releases/r1/esc/new.txt".to_owned(),
        ),
        // A write grant that does not exist yet is created: never through the symlink.
        (
            "write",
            "releases/r1/esc/new".to_owned(),
            "releases/r1/esc/new/new.txt".to_owned(),
        ),
    ];
    for (how, grant, path) in cases {
        let yaml = format!(
            "name: escape\nsteps:\n  - id: probe\n    uses: probe\n    with: {{ {how}: [\"{path}\"] }}\n    allow:\n      {how}: [\"{grant}\"]\n"
        );
        let run = run_in_flow(&dir, &yaml);
        assert_eq!(run.code, 1, "{how} {grant}: {}", run.stdout);
        let (kind, message) = run.error("probe");
        assert_eq!(kind, "setup", "{how} {grant}: {message}");
        assert!(
            message.contains("leads out of") && message.contains("esc"),
            "{how} {grant}: {message}"
        );
        let outside: Vec<_> = std::fs::read_dir(dir.path().join("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["secret.txt"], "{how} {grant}");
    }
}

#[test]
fn a_grant_through_a_symlink_that_stays_inside_is_opened() {
    // Capistrano's `current -> r1` stays in the workflow's directory and must keep working.
    let dir = TestDir::new();
    escaping_release(&dir);
    dir.write("flow/releases/r1/index.html", "r1");
    let yaml = "name: inside\nsteps:\n  - id: read\n    uses: probe\n    with: { read: [releases/current/index.html] }\n    allow:\n      read: [releases/current]\n  - id: write\n    uses: probe\n    with: { write: [releases/current/logs/new.txt] }\n    allow:\n      write: [releases/current/logs]\n";
    let run = run_in_flow(&dir, yaml);
    assert_eq!(run.code, 0, "{}", run.stdout);
    let outputs = &run.step("read")["outputs"];
    assert_eq!(
        outputs["read"]["releases/current/index.html"]["content"], "r1",
        "{outputs}"
    );
    let outputs = &run.step("write")["outputs"];
    assert_eq!(
        outputs["write"]["releases/current/logs/new.txt"]["ok"], true,
        "{outputs}"
    );
    assert!(dir.path().join("flow/releases/r1/logs/new.txt").is_file());
}

#[test]
fn a_plugin_that_opens_files_without_end_hits_the_step_resource_limit() {
    // Bug: one step with one `read` grant could open files until the process ran out of
    // descriptors, and then the daemon could accept nothing and read no workflow directory.
    let dir = TestDir::new();
    dir.write("data/file.txt", "x");
    let yaml = "name: fds\nsteps:\n  - id: hoard\n    uses: misbehave\n    with: { mode: open_files, path: data/file.txt }\n    allow:\n      read: [data]\n  - id: after\n    uses: probe\n    needs: hoard\n    if: ${{ failure() && steps.hoard.status == 'failed' }}\n    with: { read: [data/file.txt] }\n    allow:\n      read: [data]\n";
    let run = dir.run(yaml, &[]);
    let (kind, message) = run.error("hoard");
    assert_eq!(kind, "trap", "{message}");
    assert!(
        message.contains("resource limit") && message.contains("1024"),
        "{message}"
    );
    // The engine still has descriptors for the next step.
    assert_eq!(
        run.step("after")["outputs"]["read"]["data/file.txt"]["content"],
        "x",
        "{}",
        run.stdout
    );
}

#[test]
fn a_workflow_directory_that_cannot_be_read_keeps_its_workflows_in_service() {
    // Bug: the daemon's reload took a directory it could not read (say, with every descriptor
    // taken) as empty, and took every workflow in it out of service.
    let deadline = Duration::from_secs(60);
    let dir = TestDir::new();
    dir.write(
        "workflows/keep.yaml",
        "name: keep\nsteps:\n  - id: a\n    uses: noop\n",
    );
    let output = dir
        .shiphat()
        .args(["token", "create", "root", "--role", "admin", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let token = format!(
        "Bearer {}",
        String::from_utf8(output.stdout).unwrap().trim()
    );
    let daemon = support::Daemon::start(&dir, &["--data-dir", "data", "--workflows", "workflows"]);
    let names = || -> Vec<String> {
        let (status, _, list) = daemon.call(
            "GET",
            "/api/v1/workflows",
            &[("Authorization", token.as_str())],
            None,
        );
        assert_eq!(status, 200, "{list}");
        list["workflows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(), ["keep"]);
    // A file where the directory was: reading it fails, as it does with no descriptors left.
    std::fs::rename(dir.path().join("workflows"), dir.path().join("moved")).unwrap();
    dir.write("workflows", "");
    let said = daemon.wait_for_stderr("cannot read the workflow directory", deadline);
    assert!(said.contains("stay as last loaded"), "{said}");
    assert_eq!(names(), ["keep"]);
}

#[test]
fn what_many_core_instances_cost_the_host_counts_against_the_step_memory_limit() {
    // Bug: each core instance keeps its globals in host memory the limiter never saw, so a
    // module with many globals, instantiated many times, took far more than `memory`.
    let dir = TestDir::new();
    let mut extra = String::from("(core module $globals\n");
    extra.push_str(&"  (global i32 (i32.const 0))\n".repeat(50_000));
    extra.push_str(")\n");
    extra.push_str(&"(core instance (instantiate $globals))\n".repeat(100));
    let file = support::wat::component(
        dir.path(),
        "globals",
        &support::wat::hoarder(0, 0, 0, 0),
        &extra,
    );
    let run = run_component(&dir, &file, "64MiB");
    assert_eq!(run.code, 1, "{}", run.stderr);
    let (kind, message) = run.error("hoard");
    assert_eq!(kind, "memory", "{message}");
    assert!(message.contains("64MiB"), "{message}");
    // About 80 MB of instances fit the default limit.
    let run = run_component(&dir, &file, "256MiB");
    assert_eq!(run.status("hoard"), "succeeded", "{}", run.stderr);
}

#[test]
fn a_plugin_cannot_make_the_engine_copy_more_than_a_step_can_keep() {
    // Bug: the engine copied up to 128 MiB out of the plugin per call (wasmtime's default)
    // before looking at it, however little the step could keep.
    let dir = TestDir::new();
    // 64 MiB of summary, four times what the engine now copies in one call.
    let yaml = "name: huge\nsteps:\n  - id: huge\n    uses: misbehave\n    with: { mode: big_summary, size: 67108864 }\n";
    let run = dir.run(yaml, &[]);
    let (kind, message) = run.error("huge");
    assert_eq!(kind, "bad_output", "{message}");
    assert!(
        message.contains("more than 16MiB to the engine in one call"),
        "{message}"
    );
    assert!(
        run.max_rss_kib < 300 * 1024,
        "the engine peaked at {} MiB",
        run.max_rss_kib / 1024
    );
}

#[test]
fn a_step_stuck_in_a_file_call_still_times_out() {
    // Bug: a step's file calls block the thread it runs on, and that was a runtime worker: a
    // read of a FIFO that no one writes stalled the worker, and the step's timeout never fired.
    let dir = TestDir::new();
    dir.write("data/file.txt", "x");
    dir.mkfifo("data/fifo");
    let yaml = "name: stuck\nsteps:\n  - id: stuck\n    uses: probe\n    timeout: 1s\n    with: { read: [data/fifo] }\n    allow:\n      read: [data]\n  - id: after\n    uses: probe\n    needs: stuck\n    if: ${{ failure() }}\n    with: { read: [data/file.txt] }\n    allow:\n      read: [data]\n";
    let run = dir.run(yaml, &[]);
    let (kind, message) = run.error("stuck");
    assert_eq!(kind, "timeout", "{message}");
    assert_eq!(
        run.step("after")["outputs"]["read"]["data/file.txt"]["content"],
        "x",
        "{}",
        run.stdout
    );
    assert!(run.wall < Duration::from_secs(30), "took {:?}", run.wall);
}

#[test]
fn a_lock_held_by_a_step_its_timeout_stopped_is_released() {
    // Bug: a step the engine stopped (its timeout, a cancel) could not release a lock it had
    // taken, so a deploy's lock outlived the deploy until someone deleted it.
    let dir = TestDir::new();
    dir.write("data/.keep", "");
    let yaml = "name: locks\nsteps:\n  - id: hold\n    uses: misbehave\n    timeout: 1s\n    with: { mode: lock_and_loop, path: data/lock }\n    allow:\n      write: [data]\n  - id: after\n    uses: misbehave\n    needs: hold\n    if: ${{ failure() }}\n    with: { mode: lock, path: data/lock }\n    allow:\n      write: [data]\n";
    let run = dir.run(yaml, &[]);
    let (kind, message) = run.error("hold");
    assert_eq!(kind, "timeout", "{message}");
    assert_eq!(
        run.step("after")["outputs"]["taken"],
        true,
        "{}",
        run.stdout
    );
}

#[test]
fn a_read_grant_cannot_take_a_lock() {
    // Bug: `host.try-lock` took a file opened for reading only, so a step granted only `read`
    // on a deploy target could hold off every deploy of it until its own timeout.
    let dir = TestDir::new();
    dir.write("data/lock", "");
    let yaml = "name: locks\nsteps:\n  - id: reader\n    uses: misbehave\n    with: { mode: lock_read_only, path: data/lock }\n    allow:\n      read: [data]\n  - id: writer\n    uses: misbehave\n    needs: reader\n    if: ${{ always() }}\n    with: { mode: lock, path: data/lock }\n    allow:\n      write: [data]\n";
    let run = dir.run(yaml, &[]);
    let (kind, message) = run.error("reader");
    assert_eq!(kind, "failed", "{message}");
    assert!(message.contains("open for reading only"), "{message}");
    assert_eq!(
        run.step("writer")["outputs"]["taken"],
        true,
        "{}",
        run.stdout
    );
}

#[test]
fn only_a_write_grant_can_sync_a_filesystem() {
    // `host.sync-filesystem` makes the disk flush everything written to a filesystem: a step
    // may ask for it only where it may write.
    let dir = TestDir::new();
    dir.write("data/.keep", "");
    dir.write("docs/.keep", "");
    let yaml = "name: sync\nsteps:\n  - id: writer\n    uses: misbehave\n    with: { mode: sync_filesystem, path: data }\n    allow:\n      write: [data]\n  - id: reader\n    uses: misbehave\n    with: { mode: sync_filesystem, path: docs }\n    allow:\n      read: [docs]\n";
    let run = dir.run(yaml, &[]);
    assert_eq!(
        run.step("writer")["outputs"]["synced"],
        true,
        "{}",
        run.stdout
    );
    let (kind, message) = run.error("reader");
    assert_eq!(kind, "failed", "{message}");
    assert!(message.contains("open for reading only"), "{message}");
}
