//! The `qa-checker` plugin through the real engine: JUnit reports in the dialects real tools
//! write (one of them produced by cargo-nextest during the test), and commit statuses served
//! by a GitHub-shaped API on loopback.

mod support;

use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use support::http::{Reply, Request, Server};
use support::{Run, TestDir};

/// A workflow with one `qa` step reading JUnit reports under `reports/`.
fn junit_workflow(with: &str) -> String {
    format!(
        "name: qa
steps:
  - id: qa
    uses: qa-checker
    with: {{ source: junit, {with} }}
    allow:
      read: [reports]
"
    )
}

/// Copies checked-in samples from `tests/fixtures/junit/` into the test's `reports/`.
fn fixtures(dir: &TestDir, names: &[&str]) {
    let from = support::root().join("tests/fixtures/junit");
    for name in names {
        let text = std::fs::read(from.join(name)).unwrap();
        dir.write(&format!("reports/{name}"), text);
    }
}

fn assert_green(run: &Run) {
    assert_eq!(
        run.status("qa"),
        "succeeded",
        "{:?}\n{}",
        run.error("qa"),
        run.stderr
    );
    assert_eq!(run.code, 0);
}

/// Asserts the step failed with `kind` and returns its message.
fn assert_red<'a>(run: &'a Run, kind: &str) -> &'a str {
    assert_eq!(run.status("qa"), "failed", "{}", run.stdout);
    let (got, message) = run.error("qa");
    assert_eq!(got, kind, "{message}");
    assert_eq!(run.code, 1);
    message
}

// ---------------------------------------------------------------------------------------
// JUnit
// ---------------------------------------------------------------------------------------

/// How long building and running the throwaway crate's tests may take.
const NEXTEST_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn a_report_written_by_cargo_nextest_is_read() {
    let dir = TestDir::new();
    dir.write(
        "Cargo.toml",
        "[package]\nname = \"throwaway\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[workspace]\n",
    );
    dir.write(
        "src/lib.rs",
        "#[cfg(test)]
mod tests {
    #[test]
    fn passes() {}

    #[test]
    fn fails() {
        assert_eq!(1 + 1, 3, \"arithmetic is broken\");
    }

    #[test]
    #[ignore]
    fn ignored() {}
}
",
    );
    dir.write(
        ".config/nextest.toml",
        "[profile.default.junit]\npath = \"junit.xml\"\n",
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .args(["nextest", "run", "--no-fail-fast"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env("CARGO_NET_OFFLINE", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run `cargo nextest`; is cargo-nextest installed?");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > NEXTEST_DEADLINE {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("`cargo nextest run` took longer than {NEXTEST_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // nextest exits 100 when a test failed, which is the point here.
    assert_eq!(status.code(), Some(100), "cargo nextest: {status}");
    let report = "target/nextest/default/junit.xml";
    assert!(dir.path().join(report).is_file(), "nextest wrote no report");

    let workflow = |report: &str, with: &str| {
        format!(
            "name: qa
steps:
  - id: qa
    uses: qa-checker
    with: {{ source: junit, reports: ['{report}']{with} }}
    allow:
      read: [target/nextest]
"
        )
    };
    let run = dir.run(&workflow(report, ""), &[]);
    let message = assert_red(&run, "failed");
    assert_eq!(
        message, "QA red: 1 failed (throwaway::tests::fails)",
        "{}",
        run.stdout
    );
    let outputs = &run.step("qa")["outputs"];
    // nextest leaves ignored tests out of its JUnit report, so none counts as skipped.
    assert_eq!(outputs["tests"], 2, "{outputs}");
    assert_eq!(outputs["failures"], 1);
    assert_eq!(outputs["errors"], 0);
    assert_eq!(outputs["skipped"], 0);
    assert_eq!(outputs["pass_rate"], 0.5);
    assert_eq!(outputs["failing"], json!(["throwaway::tests::fails"]));
    assert_eq!(outputs["reports"], json!([report]));

    // Regression: a glob under a nested grant (`target/nextest`) matched nothing, because the
    // walk started at `target`, which the step cannot see.
    let run = dir.run(
        &workflow("target/nextest/*/junit.xml", ", max_failures: 1"),
        &[],
    );
    assert_green(&run);
    assert_eq!(
        run.step("qa")["summary"],
        "QA green: 1 passed, 1 failed",
        "{}",
        run.stdout
    );
}

#[test]
fn pytest_failures_and_errors_are_red_and_named() {
    let dir = TestDir::new();
    fixtures(&dir, &["pytest.xml"]);
    let run = dir.run(&junit_workflow("reports: [reports/pytest.xml]"), &[]);
    let message = assert_red(&run, "failed");
    assert_eq!(
        message,
        "QA red: 1 failed, 1 error (tests.test_api.TestLogin::test_login_bad_password, tests.test_cart::test_checkout)"
    );
    let outputs = &run.step("qa")["outputs"];
    assert_eq!(outputs["tests"], 7, "{outputs}");
    assert_eq!(outputs["failures"], 1);
    assert_eq!(outputs["errors"], 1);
    assert_eq!(outputs["skipped"], 2);
    assert_eq!(outputs["pass_rate"], 0.6);

    // Failures and errors count together against `max_failures`.
    let run = dir.run(
        &junit_workflow("reports: [reports/pytest.xml], max_failures: 1"),
        &[],
    );
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: 1 failed, 1 error, more than `max_failures` 1 (tests.test_api.TestLogin::test_login_bad_password, tests.test_cart::test_checkout)"
    );
    let run = dir.run(
        &junit_workflow("reports: [reports/pytest.xml], max_failures: 2"),
        &[],
    );
    assert_green(&run);
    assert_eq!(
        run.step("qa")["summary"],
        "QA green: 3 passed, 1 failed, 1 error, 2 skipped"
    );
}

#[test]
fn surefire_reports_are_globbed_and_judged_by_min_pass_rate() {
    let dir = TestDir::new();
    fixtures(
        &dir,
        &[
            "surefire-reports/TEST-com.example.shop.api.LoginTest.xml",
            "surefire-reports/TEST-com.example.shop.cart.CartServiceTest.xml",
        ],
    );
    let with = |rate: &str| {
        format!(
            "reports: ['reports/surefire-reports/TEST-*.xml'], max_failures: 1, min_pass_rate: {rate}"
        )
    };
    // 7 tests: 1 skipped, 1 error, and a flaky test that passed on a rerun: 5 of 6 passed.
    let run = dir.run(&junit_workflow(&with("0.9")), &[]);
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: pass rate 83.33% is below `min_pass_rate` 90% (5 passed, 1 error, 1 skipped)"
    );
    let outputs = &run.step("qa")["outputs"];
    assert_eq!(outputs["tests"], 7, "{outputs}");
    assert_eq!(outputs["errors"], 1);
    assert_eq!(outputs["failures"], 0);
    assert_eq!(
        outputs["failing"],
        json!(["com.example.shop.cart.CartServiceTest::appliesDiscount"])
    );
    assert_eq!(
        outputs["reports"],
        json!([
            "reports/surefire-reports/TEST-com.example.shop.api.LoginTest.xml",
            "reports/surefire-reports/TEST-com.example.shop.cart.CartServiceTest.xml"
        ])
    );

    let run = dir.run(&junit_workflow(&with("0.8")), &[]);
    assert_green(&run);
    assert_eq!(
        run.step("qa")["summary"],
        "QA green: 5 passed, 1 error, 1 skipped"
    );
}

// Regression: googletest's disabled tests (`status="notrun"`, no `<skipped>`) counted as
// passed, so `pass_rate` cleared a `min_pass_rate` the tests that ran did not reach.
#[test]
fn googletest_tests_that_did_not_run_are_skipped_not_passed() {
    let dir = TestDir::new();
    fixtures(&dir, &["googletest.xml"]);
    // 7 tests: 1 failed, 1 skipped and 2 disabled: 3 of the 4 that ran passed.
    let run = dir.run(
        &junit_workflow("reports: [reports/googletest.xml], max_failures: 1, min_pass_rate: 0.8"),
        &[],
    );
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: pass rate 75% is below `min_pass_rate` 80% (3 passed, 1 failed, 3 skipped)"
    );
    let outputs = &run.step("qa")["outputs"];
    assert_eq!(outputs["tests"], 7, "{outputs}");
    assert_eq!(outputs["skipped"], 3);
    assert_eq!(outputs["pass_rate"], 0.75);
    assert_eq!(outputs["failing"], json!(["CartTest::RemovesItem"]));
}

#[test]
fn jest_junit_green_and_red() {
    let dir = TestDir::new();
    fixtures(&dir, &["jest-junit.xml", "jest-junit-red.xml"]);
    let run = dir.run(&junit_workflow("reports: [reports/jest-junit.xml]"), &[]);
    assert_green(&run);
    let step = run.step("qa");
    assert_eq!(step["summary"], "QA green: 5 passed, 1 skipped");
    assert_eq!(step["outputs"]["pass_rate"], 1.0);
    assert_eq!(step["outputs"]["failing"], json!([]));

    // A suite that failed to run is a test case with `tests="0"` on its suite: the elements
    // count it, the attributes would not.
    let run = dir.run(
        &junit_workflow("reports: [reports/jest-junit-red.xml]"),
        &[],
    );
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: 1 failed, 1 error (cart removes an item, Test suite failed to run::src/checkout.test.ts)"
    );
    assert_eq!(run.step("qa")["outputs"]["tests"], 5);
}

#[test]
fn several_patterns_add_up_and_each_report_counts_once() {
    let dir = TestDir::new();
    fixtures(&dir, &["jest-junit.xml", "pytest.xml"]);
    let run = dir.run(
        &junit_workflow("reports: ['reports/*.xml', reports/jest-junit.xml], max_failures: 2"),
        &[],
    );
    assert_green(&run);
    let outputs = &run.step("qa")["outputs"];
    assert_eq!(outputs["tests"], 13, "{outputs}");
    assert_eq!(
        outputs["reports"],
        json!(["reports/jest-junit.xml", "reports/pytest.xml"])
    );
}

// Regression: a suite that reports an error in its attributes but holds no test case (the
// class failed to load) was counted as green.
#[test]
fn a_suite_that_failed_before_any_test_is_an_error() {
    let dir = TestDir::new();
    dir.write(
        "reports/TEST-com.example.BootTest.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.BootTest" time="0" tests="1" errors="1" skipped="0" failures="0"/>
"#,
    );
    let run = dir.run(&junit_workflow("reports: ['reports/*.xml']"), &[]);
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: 1 error (com.example.BootTest)"
    );
}

// Regression: a test case with an empty name (Surefire's for a failed JUnit 5 `@BeforeAll`,
// googletest's for a failure outside any test) showed as `Class::` or as an empty string.
#[test]
fn a_test_with_an_empty_name_is_named_after_its_class_or_suite() {
    let dir = TestDir::new();
    dir.write(
        "reports/TEST-com.example.shop.db.RepositoryTest.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite name="com.example.shop.db.RepositoryTest" time="0.412" tests="1" errors="1" skipped="0" failures="0">
  <testcase name="" classname="com.example.shop.db.RepositoryTest" time="0.412">
    <error message="the database did not start" type="java.lang.IllegalStateException">java.lang.IllegalStateException: the database did not start</error>
  </testcase>
</testsuite>
"#,
    );
    dir.write(
        "reports/gtest.xml",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="0" failures="0" disabled="0" errors="0" time="0.007" timestamp="2026-12-01T09:00:00.000" name="AllTests">
  <testsuite name="NonTestSuiteFailure" tests="1" failures="1" disabled="0" skipped="0" errors="0" time="0" timestamp="2026-12-01T09:00:00.000">
    <testcase name="" status="run" result="completed" time="0" timestamp="2026-12-01T09:00:00.000" classname="">
      <failure message="main.cc:12&#x0A;Expected equality of these values:&#x0A;  1&#x0A;  2" type=""><![CDATA[main.cc:12
Expected equality of these values:
  1
  2]]></failure>
    </testcase>
  </testsuite>
</testsuites>
"#,
    );
    let run = dir.run(&junit_workflow("reports: ['reports/*.xml']"), &[]);
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: 1 failed, 1 error (com.example.shop.db.RepositoryTest, NonTestSuiteFailure)"
    );
    assert_eq!(
        run.step("qa")["outputs"]["failing"],
        json!(["com.example.shop.db.RepositoryTest", "NonTestSuiteFailure"])
    );
}

#[test]
fn no_matching_report_fails_naming_the_patterns() {
    let dir = TestDir::new();
    std::fs::create_dir(dir.path().join("reports")).unwrap();
    let run = dir.run(
        &junit_workflow("reports: ['reports/*.xml', 'reports/**/TEST-*.xml']"),
        &[],
    );
    let message = assert_red(&run, "failed");
    assert!(
        message.starts_with("QA red: no report matched `reports/*.xml`, `reports/**/TEST-*.xml`"),
        "{message}"
    );
}

#[test]
fn a_report_older_than_max_age_fails() {
    let dir = TestDir::new();
    fixtures(&dir, &["jest-junit.xml"]);
    let with = "reports: [reports/jest-junit.xml], max_age: 1h";
    let run = dir.run(&junit_workflow(with), &[]);
    assert_green(&run);

    let file = std::fs::File::options()
        .write(true)
        .open(dir.path().join("reports/jest-junit.xml"))
        .unwrap();
    file.set_modified(SystemTime::now() - Duration::from_secs(2 * 3600 + 60))
        .unwrap();
    drop(file);
    let run = dir.run(&junit_workflow(with), &[]);
    let message = assert_red(&run, "failed");
    assert!(
        message.starts_with(
            "QA red: the newest report `reports/jest-junit.xml` is 2h 1m old, older than `max_age` 1h"
        ),
        "{message}"
    );
    // What was measured is still there for later steps and people.
    assert_eq!(run.step("qa")["outputs"]["tests"], 6, "{}", run.stdout);
}

#[test]
fn malformed_xml_fails_naming_the_file_and_position() {
    let dir = TestDir::new();
    fixtures(&dir, &["jest-junit.xml"]);
    dir.write(
        "reports/truncated.xml",
        "<?xml version=\"1.0\"?>\n<testsuites>\n  <testsuite name=\"a\">\n    <testcase name=\"b\"\n",
    );
    let run = dir.run(&junit_workflow("reports: ['reports/*.xml']"), &[]);
    let message = assert_red(&run, "failed");
    assert!(
        message.starts_with("QA red: `reports/truncated.xml` is not well-formed XML: "),
        "{message}"
    );
    assert!(message.contains("line 5, column 1"), "{message}");

    // Regression: a report cut off between whole elements was said to fail "at line 1,
    // column 1" (roxmltree's `UnclosedRootNode` carries no position), not where it ends.
    dir.write(
        "reports/truncated.xml",
        "<?xml version=\"1.0\"?>\n<testsuites>\n  <testsuite name=\"a\">\n    <testcase name=\"b\"/>",
    );
    let run = dir.run(&junit_workflow("reports: ['reports/*.xml']"), &[]);
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: `reports/truncated.xml` is not well-formed XML: the file ends inside an element (was it cut off?) at line 4, column 25"
    );

    dir.write(
        "reports/truncated.xml",
        "<html><body>502 Bad Gateway</body></html>",
    );
    let run = dir.run(&junit_workflow("reports: ['reports/*.xml']"), &[]);
    assert_eq!(
        assert_red(&run, "failed"),
        "QA red: `reports/truncated.xml` is not a JUnit report: its root element is `<html>`, not `<testsuites>` or `<testsuite>`"
    );
}

#[test]
fn the_schema_refuses_keys_of_the_other_source_and_missing_ones() {
    let dir = TestDir::new();
    let run = dir.run(
        &junit_workflow("reports: [reports/a.xml], repo: acme/shop"),
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("repo"), "{}", run.stderr);

    let run = dir.run(&junit_workflow("max_failures: 1"), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("reports"), "{}", run.stderr);

    let run = dir.run(&junit_workflow("reports: [a.xml], max_age: soon"), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("max_age"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------
// commit-status
// ---------------------------------------------------------------------------------------

const TOKEN: &str = "ghp_test-token-1234";
const SHA: &str = "abc1234def5678abc1234def5678abc1234def56";

/// A GitHub-shaped API on loopback. `answer` gets the path (without query) and how many
/// requests for that path came before, and gives a status and a JSON body. Every request must
/// carry `Authorization: Bearer TOKEN`, or it gets GitHub's 401.
fn fake_github(answer: impl Fn(&str, usize) -> (u16, Value) + Send + 'static) -> Server {
    fake_github_replies(move |request, before| {
        let path = request.path();
        let (status, body) = answer(path, before.iter().filter(|r| r.path() == path).count());
        Reply::json(status, &body)
    })
}

/// [`fake_github`] for answers that need the whole request (its query, its `host`) or headers
/// of their own.
fn fake_github_replies(answer: impl Fn(&Request, &[Request]) -> Reply + Send + 'static) -> Server {
    Server::start(move |request, before| {
        if request.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
            Reply::json(
                401,
                &json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest", "status": "401" }),
            )
        } else {
            answer(request, before)
        }
    })
}

/// One page of `items` as GitHub pages a list: `page=N` in the query (1 when absent), 100 a
/// page, wrapped by `body`, and on every page but the last a `Link` header whose `rel="next"`
/// and `rel="last"` point at `next_path` on `host`, as GitHub's links point at
/// `/repositories/ID/...` rather than the path asked for.
fn github_page(
    request: &Request,
    host: &str,
    next_path: &str,
    items: &[Value],
    body: impl Fn(Vec<Value>) -> Value,
) -> Reply {
    const PER_PAGE: usize = 100;
    let page: usize = request
        .target
        .split_once('?')
        .and_then(|(_, query)| query.split('&').find_map(|p| p.strip_prefix("page=")))
        .map_or(1, |n| n.parse().unwrap());
    let pages = items.len().div_ceil(PER_PAGE).max(1);
    let chunk = items
        .iter()
        .skip((page - 1) * PER_PAGE)
        .take(PER_PAGE)
        .cloned()
        .collect();
    let reply = Reply::json(200, &body(chunk));
    if page == pages {
        return reply;
    }
    let link = |n: usize| format!("<http://{host}{next_path}?per_page={PER_PAGE}&page={n}>");
    reply.header(
        "link",
        format!(
            "{}; rel=\"next\", {}; rel=\"last\"",
            link(page + 1),
            link(pages)
        ),
    )
}

fn combined(state: &str, statuses: &[(&str, &str)]) -> Value {
    json!({
        "state": state,
        "sha": SHA,
        "total_count": statuses.len(),
        "statuses": statuses.iter().map(|(context, state)| json!({
            "context": context,
            "state": state,
            "description": "",
            "target_url": "https://ci.example.com/build/1",
        })).collect::<Vec<_>>(),
    })
}

fn check_runs(runs: &[(&str, &str, Option<&str>)]) -> Value {
    json!({
        "total_count": runs.len(),
        "check_runs": runs.iter().map(|(name, status, conclusion)| json!({
            "id": 4,
            "head_sha": SHA,
            "name": name,
            "status": status,
            "conclusion": conclusion,
        })).collect::<Vec<_>>(),
    })
}

const STATUS_PATH: &str = "/repos/acme/shop/commits/main/status";
const CHECKS_PATH: &str = "/repos/acme/shop/commits/main/check-runs";

/// Runs a workflow with one commit-status step against `api`, with the token in the engine's
/// environment as `token`.
fn run_commit_status(api: &Server, token: &str, extra: &str) -> Run {
    let dir = TestDir::new();
    let yaml = format!(
        "name: qa
steps:
  - id: qa
    uses: qa-checker
    with:
      source: commit-status
      api: {}
      repo: acme/shop
      ref: main
      token_secret: GITHUB_TOKEN
{extra}
    allow:
      http: [\"{}\"]
      secrets: [GITHUB_TOKEN]
",
        api.url(""),
        api.host()
    );
    let file = dir.write("workflow.yaml", yaml);
    let mut command = dir.shiphat();
    command
        .env("GITHUB_TOKEN", token)
        .arg("run")
        .arg(&file)
        .arg("--json");
    let run = Run::of(command);
    // Keep the directory until the run is over.
    drop(dir);
    run
}

#[test]
fn commit_status_green_with_statuses_and_check_runs() {
    let api = fake_github(|path, _| match path {
        STATUS_PATH => (
            200,
            combined(
                "success",
                &[("ci/build", "success"), ("ci/test", "success")],
            ),
        ),
        CHECKS_PATH => (
            200,
            check_runs(&[
                ("lint", "completed", Some("success")),
                ("docs", "completed", Some("skipped")),
                ("audit", "completed", Some("neutral")),
            ]),
        ),
        _ => (404, json!({ "message": "Not Found" })),
    });
    let run = run_commit_status(&api, TOKEN, "");
    assert_green(&run);
    let step = run.step("qa");
    assert_eq!(step["summary"], "QA green: 5 checks passed on abc1234");
    assert_eq!(step["outputs"]["state"], "success");
    assert_eq!(step["outputs"]["sha"], SHA);
    assert_eq!(step["outputs"]["contexts"].as_array().unwrap().len(), 5);

    let requests = api.requests();
    assert_eq!(requests.len(), 2, "{requests:?}");
    for request in &requests {
        assert_eq!(
            request.header("accept"),
            Some("application/vnd.github+json")
        );
        assert_eq!(request.header("user-agent"), Some("shiphat"));
    }
    // The token never reaches the events.
    assert!(!run.stdout.contains(TOKEN));
}

#[test]
fn commit_status_red_names_the_red_contexts() {
    let api = fake_github(|path, _| match path {
        STATUS_PATH => (
            200,
            combined(
                "failure",
                &[("ci/build", "failure"), ("ci/test", "success")],
            ),
        ),
        CHECKS_PATH => (
            200,
            check_runs(&[
                ("lint", "completed", Some("failure")),
                ("e2e", "in_progress", None),
                ("deploy-preview", "completed", Some("timed_out")),
            ]),
        ),
        _ => (404, json!({ "message": "Not Found" })),
    });
    // Red wins over waiting: no retry could turn it green.
    let run = run_commit_status(
        &api,
        TOKEN,
        "    retries: { count: 3, backoff: { initial: 10ms } }",
    );
    let message = assert_red(&run, "failed");
    assert_eq!(
        message,
        "QA red: ci/build failed, lint failed, deploy-preview timed out"
    );
    assert_eq!(run.step("qa")["attempts"], 1);
    assert_eq!(
        run.step("qa")["outputs"]["failing"],
        json!(["ci/build", "lint", "deploy-preview"])
    );
}

#[test]
fn commit_status_pending_is_transient_and_retried_until_green() {
    let api = fake_github(|path, before| match path {
        STATUS_PATH if before == 0 => (200, combined("pending", &[("ci/build", "pending")])),
        STATUS_PATH => (200, combined("success", &[("ci/build", "success")])),
        CHECKS_PATH if before == 0 => (200, check_runs(&[("lint", "queued", None)])),
        CHECKS_PATH => (200, check_runs(&[("lint", "completed", Some("success"))])),
        _ => (404, json!({ "message": "Not Found" })),
    });
    let run = run_commit_status(
        &api,
        TOKEN,
        "    retries: { count: 3, backoff: { initial: 20ms, factor: 1 } }",
    );
    assert_green(&run);
    let step = run.step("qa");
    assert_eq!(step["attempts"], 2, "{}", run.stdout);
    assert_eq!(step["summary"], "QA green: 2 checks passed on abc1234");
    let waited = run.events.iter().any(|e| {
        e.to_string()
            .contains("waiting for ci/build (pending), lint (queued)")
    });
    assert!(
        waited,
        "the pending attempt is not in the events:\n{}",
        run.stdout
    );
}

// Regression: only the first 100 statuses and check runs were read, so a red check run on a
// later page of a commit with more than 100 let the deploy through.
#[test]
fn statuses_and_check_runs_past_the_first_page_are_judged() {
    const PAGED_STATUS_PATH: &str = "/repositories/42/commits/main/status";
    const PAGED_CHECKS_PATH: &str = "/repositories/42/commits/main/check-runs";
    // 101 statuses (two pages) and 203 check runs (three pages), all green but the last.
    let statuses: Vec<Value> = (0..101)
        .map(|i| json!({ "context": format!("ci/shard-{i}"), "state": "success" }))
        .collect();
    let serve = move |last_conclusion: &'static str| {
        let statuses = statuses.clone();
        let mut runs: Vec<Value> = (0..202)
            .map(|i| json!({ "name": format!("test-{i}"), "status": "completed", "conclusion": "success" }))
            .collect();
        runs.push(json!({ "name": "deploy-preview", "status": "completed", "conclusion": last_conclusion }));
        // The links name the server's own address, known once it listens.
        let host = Arc::new(OnceLock::<String>::new());
        let own = host.clone();
        let api = fake_github_replies(move |request, _| {
            let host = own.get().expect("set before any request");
            match request.path() {
                STATUS_PATH | PAGED_STATUS_PATH => github_page(
                    request,
                    host,
                    PAGED_STATUS_PATH,
                    &statuses,
                    |page| json!({ "state": "success", "sha": SHA, "total_count": 101, "statuses": page }),
                ),
                CHECKS_PATH | PAGED_CHECKS_PATH => github_page(
                    request,
                    host,
                    PAGED_CHECKS_PATH,
                    &runs,
                    |page| json!({ "total_count": 203, "check_runs": page }),
                ),
                _ => Reply::json(404, &json!({ "message": "Not Found" })),
            }
        });
        host.set(api.host()).unwrap();
        api
    };
    let api = serve("failure");
    let run = run_commit_status(&api, TOKEN, "");
    assert_eq!(assert_red(&run, "failed"), "QA red: deploy-preview failed");
    let targets: Vec<String> = api.requests().into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            format!("{STATUS_PATH}?per_page=100"),
            format!("{PAGED_STATUS_PATH}?per_page=100&page=2"),
            format!("{CHECKS_PATH}?per_page=100"),
            format!("{PAGED_CHECKS_PATH}?per_page=100&page=2"),
            format!("{PAGED_CHECKS_PATH}?per_page=100&page=3"),
        ]
    );

    let api = serve("success");
    let run = run_commit_status(&api, TOKEN, "");
    assert_green(&run);
    assert_eq!(
        run.step("qa")["summary"],
        "QA green: 304 checks passed on abc1234"
    );
    assert_eq!(
        run.step("qa")["outputs"]["contexts"]
            .as_array()
            .unwrap()
            .len(),
        304
    );
    // Every page carried the token and GitHub's headers, not only the first.
    for request in api.requests() {
        assert_eq!(
            request.header("authorization"),
            Some(&*format!("Bearer {TOKEN}"))
        );
        assert_eq!(request.header("x-github-api-version"), Some("2022-11-28"));
    }
}

// A server's `Link` decides where the next request goes, with the token in it: one that
// points at another host is not followed, and one that never ends stops after ten pages.
#[test]
fn next_pages_stay_on_the_api_host_and_are_bounded() {
    let elsewhere = Server::start(|_, _| Reply::json(200, &check_runs(&[])));
    let elsewhere_url = elsewhere.url("/repositories/42/commits/main/check-runs?page=2");
    let api = fake_github_replies(move |request, _| match request.path() {
        STATUS_PATH => Reply::json(200, &combined("success", &[("ci/build", "success")])),
        CHECKS_PATH => Reply::json(200, &check_runs(&[("lint", "completed", Some("success"))]))
            .header("link", format!("<{elsewhere_url}>; rel=\"next\"")),
        _ => Reply::json(404, &json!({ "message": "Not Found" })),
    });
    let run = run_commit_status(&api, TOKEN, "");
    let message = assert_red(&run, "failed");
    assert!(
        message.contains("which is not read: it is on another host than `api`"),
        "{message}"
    );
    assert!(elsewhere.requests().is_empty(), "the other host was asked");
    assert!(!run.stdout.contains(TOKEN));

    // A `next` that never ends: each page links to one more, by path alone, as RFC 8288
    // allows.
    let api = fake_github_replies(move |request, before| match request.path() {
        STATUS_PATH => Reply::json(200, &combined("success", &[("ci/build", "success")])).header(
            "link",
            format!(
                "<{STATUS_PATH}?per_page=100&page={}>; rel=\"next\"",
                before.len() + 2
            ),
        ),
        _ => Reply::json(404, &json!({ "message": "Not Found" })),
    });
    let run = run_commit_status(&api, TOKEN, "");
    let message = assert_red(&run, "failed");
    assert!(
        message.contains("has more than 10 pages of statuses (1000 at 100 a page)"),
        "{message}"
    );
    assert_eq!(api.requests().len(), 10);
}

#[test]
fn a_missing_required_context_is_transient_and_named() {
    let api = fake_github(|path, _| match path {
        STATUS_PATH => (200, combined("success", &[("ci/build", "success")])),
        CHECKS_PATH => (200, check_runs(&[])),
        _ => (404, json!({ "message": "Not Found" })),
    });
    let run = run_commit_status(
        &api,
        TOKEN,
        "      required_contexts: [ci/build, security/snyk]
    retries: { count: 1, backoff: { initial: 10ms } }",
    );
    let message = assert_red(&run, "transient");
    assert!(
        message.contains("QA pending on abc1234: waiting for security/snyk (not reported yet)"),
        "{message}"
    );
    assert_eq!(run.step("qa")["attempts"], 2);
}

#[test]
fn a_refused_token_fails_with_a_hint() {
    let api = fake_github(|_, _| (200, combined("success", &[])));
    let run = run_commit_status(&api, "ghp_wrong", "");
    let message = assert_red(&run, "failed");
    assert!(
        message.contains("answered 401 (Bad credentials)"),
        "{message}"
    );
    assert!(
        message.contains("`token_secret` (`GITHUB_TOKEN`)"),
        "{message}"
    );
}

#[test]
fn a_server_error_is_transient() {
    let api = fake_github(|_, _| (502, json!({ "message": "Server Error" })));
    let run = run_commit_status(
        &api,
        TOKEN,
        "    retries: { count: 1, backoff: { initial: 10ms } }",
    );
    let message = assert_red(&run, "transient");
    assert!(message.contains("answered 502"), "{message}");
    assert_eq!(run.step("qa")["attempts"], 2);
}

#[test]
fn an_unknown_repository_fails_naming_repo_and_ref() {
    let api = fake_github(|_, _| (404, json!({ "message": "Not Found" })));
    let run = run_commit_status(&api, TOKEN, "");
    let message = assert_red(&run, "failed");
    assert!(
        message.contains("check `repo` `acme/shop` and `ref` `main`"),
        "{message}"
    );
}
