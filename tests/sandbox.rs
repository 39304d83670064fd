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
