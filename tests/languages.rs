//! Plugins in any language: the Python and JavaScript examples built from source and run
//! through the real engine, the same sandbox for each, and `shiphat plugin new`/`test`.
//!
//! The toolchains are found as `plugins/examples/build-any-language.sh` says:
//! componentize-py 0.25.1 as `$SHIPHAT_COMPONENTIZE_PY` or `componentize-py` on PATH, and
//! componentize-js 0.23.0 under `$SHIPHAT_JS_TOOLS/node_modules` (or the example's own
//! `node_modules`), with `node` on PATH. A missing toolchain fails the tests and says what to
//! install.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;
use support::http::{Reply, Server};
use support::{Run, TestDir, examples, root};

/// The hand-written WAT example as a component: the core module with the `step` world
/// embedded, encoded by `wit-component`, as `wasm-tools component embed` + `new` would.
fn echo_wat() -> &'static Path {
    static FILE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &FILE
        .get_or_init(|| {
            let core = std::fs::read_to_string(root().join("plugins/examples/echo-wat/echo.wat"))
                .expect("echo.wat is readable");
            let dir = tempfile::tempdir().unwrap();
            let file = support::wat::component(dir.path(), "echo-wat", &core, "");
            (dir, file)
        })
        .1
}

#[test]
fn wat_plugin_written_by_hand_runs_like_any_other() {
    let t = TestDir::new();
    let run = t.run(
        &format!(
            "name: wat\nsteps:\n  - id: echo\n    uses: {}\n    with: {{ release: \"1.2.3\", canary: true }}\n  - id: after\n    uses: echo\n    needs: echo\n    with: {{ message: \"saw ${{{{ steps.echo.outputs.release }}}}\" }}\n",
            echo_wat().display()
        ),
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let step = run.step("echo");
    assert_eq!(step["outputs"]["release"], "1.2.3");
    assert_eq!(step["outputs"]["canary"], true);
    assert_eq!(step["summary"], "echo-wat: echoed the config");
    assert_eq!(run.logs("echo"), ["hello from hand-written WebAssembly"]);
    assert_eq!(run.logs("after"), ["saw 1.2.3"]);
}

fn notify() -> PathBuf {
    examples().join("notify.wasm")
}

fn semver_gate() -> PathBuf {
    examples().join("semver-gate.wasm")
}

/// The componentize-py to use, or a failure that says how to install it.
fn componentize_py() -> String {
    let py = std::env::var("SHIPHAT_COMPONENTIZE_PY").unwrap_or_else(|_| "componentize-py".into());
    match Command::new(&py).arg("--version").output() {
        Ok(o) if o.status.success() => py,
        _ => panic!(
            "missing: componentize-py 0.25.1 (`{py}`); `pip install componentize-py==0.25.1` in a venv and put it on PATH or set SHIPHAT_COMPONENTIZE_PY"
        ),
    }
}

/// The directory whose node_modules holds componentize-js.
fn js_tools() -> PathBuf {
    let dir = std::env::var_os("SHIPHAT_JS_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("plugins/examples/semver-gate-js"));
    assert!(
        dir.join("node_modules/@bytecodealliance/componentize-js")
            .is_dir(),
        "missing: componentize-js 0.23.0 in `{}`; run `npm install` in plugins/examples/semver-gate-js or set SHIPHAT_JS_TOOLS",
        dir.display()
    );
    dir
}

fn notify_workflow(plugin: &Path, url: &str, grant: &str) -> String {
    format!(
        r#"name: ship-web
inputs:
  release: {{ type: string, required: true }}
steps:
  - id: deploy
    uses: echo
    with: {{ message: "deployed ${{{{ inputs.release }}}}" }}
  - id: notify
    uses: {plugin}
    needs: deploy
    with:
      url: "{url}"
      release: "${{{{ inputs.release }}}}"
      status: "${{{{ steps.deploy.status }}}}"
      steps: {{ deploy: "${{{{ steps.deploy.status }}}}" }}
      token_secret: HOOK_TOKEN
    allow: {{ http: ["{grant}"], secrets: [HOOK_TOKEN] }}
"#,
        plugin = plugin.display()
    )
}

#[test]
fn python_notify_posts_the_run_to_a_granted_webhook_with_a_secret_token() {
    let hook = Server::start(|_, _| Reply::ok());
    let t = TestDir::new();
    let file = t.write(
        "workflow.yaml",
        notify_workflow(&notify(), &hook.url("/hooks/deploys"), &hook.host()),
    );
    let mut command = t.shiphat();
    command
        .arg("run")
        .arg(&file)
        .args(["--json", "--input", "release=1.4.2"])
        .env("HOOK_TOKEN", "tok-7f3a91");
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("notify"), "succeeded");
    assert_eq!(run.step("notify")["outputs"]["http_status"], 200);
    let requests = hook.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("POST", "/hooks/deploys"),
        "{request:?}"
    );
    assert!(
        request
            .header("authorization")
            .is_some_and(|v| v.eq_ignore_ascii_case("bearer tok-7f3a91")),
        "{request:?}"
    );
    let body = request.json();
    assert_eq!(body["workflow"], "ship-web");
    assert_eq!(body["release"], "1.4.2");
    assert_eq!(body["status"], "succeeded");
    assert_eq!(body["steps"]["deploy"], "succeeded");
    // The token never shows in the events.
    assert!(!run.stdout.contains("tok-7f3a91"));
}

#[test]
fn python_notify_cannot_reach_a_host_that_is_not_granted() {
    let granted = Server::start(|_, _| Reply::ok());
    let other = Server::start(|_, _| Reply::ok());
    let t = TestDir::new();
    // Written literally, `validate` sees the URL (notify marks `url` with x-shiphat-grant).
    let file = t.write(
        "workflow.yaml",
        notify_workflow(&notify(), &other.url("/hook"), &granted.host()),
    );
    let mut command = t.shiphat();
    command.arg("validate").arg(&file);
    let run = Run::of(command);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("add `{}` to `allow.http`", other.host())),
        "{}",
        run.stderr
    );
    // From an expression, only the sandbox can refuse it.
    let file = t.write(
        "workflow.yaml",
        notify_workflow(&notify(), "${{ inputs.url }}", &granted.host()).replace(
            "inputs:\n",
            "inputs:\n  url: { type: string, required: true }\n",
        ),
    );
    let mut command = t.shiphat();
    command
        .arg("run")
        .arg(&file)
        .args(["--json", "--input", "release=1.4.2", "--input"])
        .arg(format!("url={}", other.url("/hook")))
        .env("HOOK_TOKEN", "tok");
    let run = Run::of(command);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let (kind, message) = run.error("notify");
    assert_eq!(kind, "failed");
    assert!(message.contains("HTTP-request-denied"), "{message}");
    assert!(other.requests().is_empty() && granted.requests().is_empty());
}

fn gate_workflow(plugin: &Path, with: &str, read: &str) -> String {
    format!(
        "name: gate\nsteps:\n  - id: gate\n    uses: {}\n    with: {with}\n    allow: {{ read: [{read}] }}\n",
        plugin.display()
    )
}

#[test]
fn js_semver_gate_passes_a_newer_release_and_fails_an_older_one_naming_both() {
    let t = TestDir::new();
    t.write("deployed/VERSION", "1.4.0\n");
    let newer = t.run(
        &gate_workflow(
            &semver_gate(),
            "{ release: 1.10.0, current_file: deployed/VERSION }",
            "deployed",
        ),
        &[],
    );
    assert_eq!(newer.code, 0, "{}\n{}", newer.stdout, newer.stderr);
    assert_eq!(newer.step("gate")["outputs"]["current"], "1.4.0");

    for (release, current) in [
        ("1.4.0", "1.4.0"),
        ("1.3.9", "1.4.0"),
        ("2.0.0-rc.1", "2.0.0"),
    ] {
        let run = t.run(
            &gate_workflow(
                &semver_gate(),
                &format!("{{ release: \"{release}\", current: \"{current}\" }}"),
                "deployed",
            ),
            &[],
        );
        assert_eq!(run.code, 1, "{release}: {}\n{}", run.stdout, run.stderr);
        let (kind, message) = run.error("gate");
        assert_eq!(kind, "failed");
        assert_eq!(
            message,
            format!("release {release} is not newer than the deployed {current}")
        );
    }
}

#[test]
fn js_semver_gate_cannot_read_a_file_outside_its_grants() {
    let t = TestDir::new();
    t.write("deployed/VERSION", "1.4.0\n");
    t.write("private/VERSION", "0.0.1\n");
    // A directory that is not granted, and a path that climbs out of one that is.
    for path in ["private/VERSION", "deployed/../private/VERSION"] {
        let run = t.run(
            &gate_workflow(
                &semver_gate(),
                &format!("{{ release: 1.5.0, current_file: \"{path}\" }}"),
                "deployed",
            ),
            &[],
        );
        assert_eq!(run.code, 1, "{path}: {}\n{}", run.stdout, run.stderr);
        let (kind, message) = run.error("gate");
        assert_eq!(kind, "failed");
        assert!(
            message.starts_with(&format!("cannot read `{path}`")),
            "{message}"
        );
        assert!(!run.stdout.contains("0.0.1"));
    }
}

/// `shiphat plugin test --json` with a cache directory of its own.
fn plugin_test(t: &TestDir, cache: &Path, args: &[&str]) -> Value {
    let mut command = t.shiphat();
    command
        .env("SHIPHAT_CACHE_DIR", cache)
        .args(["plugin", "test", "--json"])
        .args(args);
    let run = Run::of(command);
    serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr))
}

#[test]
fn examples_load_from_the_compile_cache_the_second_time() {
    let t = TestDir::new();
    t.write("deployed/VERSION", "1.0.0\n");
    let cases = [
        (notify(), r#"{"url":"http://127.0.0.1:9/x"}"#, true),
        (
            semver_gate(),
            r#"{"release":"1.0.1","current":"1.0.0"}"#,
            false,
        ),
    ];
    for (plugin, with, dry) in cases {
        let cache = tempfile::tempdir().unwrap();
        let mut args = vec![plugin.to_str().unwrap(), "--with", with];
        if dry {
            args.extend(["--dry-run", "--allow-http", "127.0.0.1:9"]);
        }
        let first = plugin_test(&t, cache.path(), &args);
        let second = plugin_test(&t, cache.path(), &args);
        assert_eq!(first["status"], "succeeded", "{first}");
        assert_eq!(second["status"], "succeeded", "{second}");
        assert_eq!(first["load"], "compiled");
        assert_eq!(second["load"], "cached");
        let (a, b) = (
            first["load_ms"].as_f64().unwrap(),
            second["load_ms"].as_f64().unwrap(),
        );
        eprintln!(
            "{}: {} bytes, first load {a:.0} ms, cached load {b:.0} ms",
            plugin.file_name().unwrap().to_string_lossy(),
            std::fs::metadata(&plugin).unwrap().len()
        );
        assert!(
            b < a,
            "the cached load ({b} ms) is not faster than the first ({a} ms)"
        );
    }
}

#[test]
fn plugin_test_prints_the_result_outputs_and_logs() {
    let t = TestDir::new();
    t.write("deployed/VERSION", "3.1.0\n");
    let out = plugin_test(
        &t,
        &t.path().join("cache"),
        &[
            semver_gate().to_str().unwrap(),
            "--with",
            r#"{"release":"3.0.0","current_file":"deployed/VERSION"}"#,
            "--allow-read",
            "deployed",
        ],
    );
    assert_eq!(out["status"], "failed", "{out}");
    assert_eq!(out["plugin"]["name"], "semver-gate");
    assert_eq!(
        out["error"]["message"],
        "release 3.0.0 is not newer than the deployed 3.1.0"
    );
    assert_eq!(out["outputs"]["current"], "3.1.0");

    // Text output, and a success with a log line.
    let mut command = t.shiphat();
    command
        .args(["plugin", "test"])
        .arg(semver_gate())
        .args(["--with", r#"{"release":"3.2.0","current":"3.1.0"}"#]);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("result: succeeded: 3.2.0 > 3.1.0"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\"release\": \"3.2.0\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("[info] release 3.2.0 is newer than the deployed 3.1.0"),
        "{}",
        run.stdout
    );
}

/// Writes a skeleton named `name` with `shiphat plugin new`, builds it with `build`, and runs
/// its workflow. Returns the test directory and the plugin's.
fn new_plugin_builds_and_runs(
    lang: &str,
    name: &str,
    build: impl FnOnce(&Path),
) -> (TestDir, std::path::PathBuf) {
    let t = TestDir::new();
    let dir = t.path().join(name);
    let mut command = t.shiphat();
    command
        .args(["plugin", "new", "--lang", lang, name])
        .arg(&dir);
    let made = Run::of(command);
    assert_eq!(made.code, 0, "{}", made.stderr);
    for file in [
        "README.md",
        "workflow.yaml",
        "wit/shiphat.wit",
        "wit/deps/http.wit",
    ] {
        assert!(dir.join(file).is_file(), "no {file}");
    }
    build(&dir);
    let mut command = t.shiphat();
    command
        .current_dir(&dir)
        .args(["run", "workflow.yaml", "--json"]);
    let run = Run::of(command);
    assert_eq!(run.code, 0, "{lang}: {}\n{}", run.stdout, run.stderr);
    assert_eq!(run.step(name)["outputs"]["greeted"], "shiphat");
    assert_eq!(run.logs(name), ["hello, shiphat"]);
    (t, dir)
}

fn check(what: &str, output: std::process::Output) {
    assert!(
        output.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn plugin_new_rust_builds_and_runs() {
    new_plugin_builds_and_runs("rust", "hello-rs", |dir| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        // A target directory kept across runs, so dependencies build once.
        let target = root().join("target/plugin-new-rust");
        let output = Command::new(cargo)
            .current_dir(dir)
            .args(["build", "--release", "--target", "wasm32-wasip2"])
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("cannot run cargo");
        check("cargo build", output);
        let built = target.join("wasm32-wasip2/release/hello_rs.wasm");
        let expected = dir.join("target/wasm32-wasip2/release/hello_rs.wasm");
        std::fs::create_dir_all(expected.parent().unwrap()).unwrap();
        std::fs::copy(built, expected).unwrap();
    });
}

#[test]
fn plugin_new_python_builds_and_runs() {
    let py = componentize_py();
    let (t, dir) = new_plugin_builds_and_runs("python", "hello-py", |dir| {
        // An exception a plugin author did not mean, for the check below.
        let app = dir.join("app.py");
        let source = std::fs::read_to_string(&app).unwrap().replace(
            "        name = config.get(\"name\", \"world\")\n",
            "        name = config.get(\"name\", \"world\")\n        if name == \"kaboom\":\n            raise RuntimeError(\"kaboom\")\n",
        );
        assert!(source.contains("RuntimeError"), "the template changed");
        std::fs::write(&app, source).unwrap();
        let output = Command::new(&py)
            .current_dir(dir)
            .args(["-d", "wit", "-w", "step", "componentize", "app", "-o"])
            .arg("hello-py.wasm")
            .output()
            .expect("cannot run componentize-py");
        check("componentize-py", output);
    });
    // Regression: the step's error was "Python function threw an unexpected exception (at
    // runtime/src/lib.rs:1293:29)" instead of the exception.
    let mut command = t.shiphat();
    command.current_dir(&dir).args([
        "plugin",
        "test",
        "--json",
        "hello-py.wasm",
        "--with",
        r#"{"name":"kaboom"}"#,
    ]);
    let run = Run::of(command);
    let result: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}\n{}", run.stdout, run.stderr));
    let error = result["error"]["message"].as_str().unwrap_or_default();
    assert!(error.contains("RuntimeError: kaboom"), "{result}");
}

#[test]
fn plugin_new_js_builds_and_runs() {
    let tools = js_tools();
    new_plugin_builds_and_runs("js", "hello-js", |dir| {
        let output = Command::new("node")
            .current_dir(dir)
            .arg("build.mjs")
            .env("SHIPHAT_JS_TOOLS", &tools)
            .output()
            .expect("cannot run node");
        check("node build.mjs", output);
    });
}

#[test]
fn plugin_new_refuses_a_bad_name_and_a_full_directory() {
    let t = TestDir::new();
    let mut command = t.shiphat();
    command.args(["plugin", "new", "--lang", "rust", "Bad_Name"]);
    let run = Run::of(command);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("`Bad_Name`"), "{}", run.stderr);
    t.write("full/x", "x");
    let mut command = t.shiphat();
    command.args(["plugin", "new", "--lang", "js", "ok", "full"]);
    let run = Run::of(command);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("not empty"), "{}", run.stderr);
}
