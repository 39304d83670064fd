//! The `metrics-verifier` plugin through the real `shiphat` binary, against a real Prometheus
//! server (Debian's `prometheus` package) scraping a small app whose metrics each test sets.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::TestDir;
use support::http::{Reply, Server};
use support::prometheus::Prometheus;

/// The app whose release is being verified: serves `/metrics` in the text exposition format,
/// with whatever text the test last set. Stops when dropped.
struct App {
    server: Server,
    metrics: Arc<Mutex<String>>,
}

impl App {
    fn start(metrics: &str) -> App {
        let metrics = Arc::new(Mutex::new(metrics.to_string()));
        let text = metrics.clone();
        let server = Server::start(move |_, _| {
            Reply::new(
                200,
                "text/plain; version=0.0.4",
                text.lock().unwrap().clone(),
            )
        });
        App { server, metrics }
    }

    /// An app that serves `pages` in turn, one per request, and then the last one again: a
    /// release whose metrics change from one measurement to the next, without timing.
    fn sequence(pages: &[String]) -> App {
        let pages = pages.to_vec();
        let server = Server::start(move |_, earlier| {
            let page = &pages[earlier.len().min(pages.len() - 1)];
            Reply::new(200, "text/plain; version=0.0.4", page.clone())
        });
        App {
            server,
            metrics: Arc::default(),
        }
    }

    /// The metrics the app serves from now on.
    fn set(&self, metrics: &str) {
        *self.metrics.lock().unwrap() = metrics.to_string();
    }

    /// `host:port`, for `allow.http` and Prometheus's targets.
    fn host(&self) -> String {
        self.server.host()
    }

    /// The `authorization` header of the last request, if any.
    fn authorization(&self) -> Option<String> {
        let requests = self.server.requests();
        requests.last()?.header("authorization").map(str::to_owned)
    }
}

/// The app's metrics with `errors` of `total` requests answered 500, as counters, and the same
/// ratio as a gauge.
fn requests(total: u32, errors: u32) -> String {
    format!(
        "# HELP http_requests_total Requests served.\n\
         # TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {}\n\
         http_requests_total{{code=\"500\"}} {errors}\n\
         # HELP error_ratio Share of requests that failed.\n\
         # TYPE error_ratio gauge\n\
         error_ratio {}\n",
        total - errors,
        f64::from(errors) / f64::from(total)
    )
}

/// The error ratio as a query over the counters, as a real AnalysisTemplate would write it.
const ERROR_RATIO: &str = r#"sum(http_requests_total{code="500"}) / sum(http_requests_total)"#;

/// A workflow with one `metrics-verifier` step `verify` (its `with:` is `with`, indented
/// under it) granted `hosts`, and an `echo` rollback in `on_failure`.
fn workflow(with: &str, hosts: &[String]) -> String {
    let with: String = with.lines().map(|l| format!("      {l}\n")).collect();
    format!(
        "name: verify-release\n\
         steps:\n\
         \x20 - id: verify\n\
         \x20   uses: metrics-verifier\n\
         \x20   allow:\n\
         \x20     http: [{}]\n\
         \x20   with:\n{with}\
         on_failure:\n\
         \x20 - id: rollback\n\
         \x20   uses: echo\n\
         \x20   with: {{ message: rolling back }}\n",
        hosts
            .iter()
            .map(|h| format!("\"{h}\""))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The outcomes of the step's measurements, in order.
fn outcomes(outputs: &Value) -> Vec<&str> {
    outputs["measurements"]
        .as_array()
        .expect("a `measurements` list")
        .iter()
        .map(|m| m["outcome"].as_str().unwrap())
        .collect()
}

#[test]
fn a_good_release_passes() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    prometheus.wait_for(ERROR_RATIO, "0.004");
    let dir = TestDir::new();
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: error_rate\n\
         \x20   query: '{ERROR_RATIO}'\n\
         \x20   interval: 250ms\n\
         \x20   count: 3\n\
         \x20   success_condition: result < 0.01\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &[prometheus.addr.to_string()]), &[]);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let step = run.step("verify");
    assert_eq!(
        step["summary"],
        "metrics green: error_rate 3 of 3 passed, last 0.004"
    );
    let outputs = &step["outputs"];
    assert_eq!(outputs["verdict"], "Successful");
    assert_eq!(outcomes(outputs), ["Successful"; 3]);
    assert_eq!(outputs["measurements"][0]["value"], 0.004);
    assert_eq!(outputs["measurements"][0]["metric"], "error_rate");
    assert!(
        outputs["measurements"][0]["time"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    assert_eq!(outputs["metrics"]["error_rate"]["successful"], 3);
    assert_eq!(outputs["metrics"]["error_rate"]["failed"], 0);
    assert!(
        run.logs("verify")
            .contains(&"error_rate = 0.004 → Successful (1/3)"),
        "{:?}",
        run.logs("verify")
    );
    assert!(
        !run.events
            .iter()
            .any(|e| e["event"] == "step_finished" && e["step"] == "rollback"),
        "the rollback ran after a good release"
    );
    // Three measurements 250 ms apart take at least two intervals.
    assert!(run.wall >= Duration::from_millis(500), "{:?}", run.wall);
}

#[test]
fn a_bad_release_fails_after_failure_limit_plus_one_failures_and_rolls_back() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    // The new release breaks: 52 of 1000 requests fail.
    app.set(&requests(1000, 52));
    prometheus.wait_for(ERROR_RATIO, "0.052");
    let dir = TestDir::new();
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: error_rate\n\
         \x20   query: '{ERROR_RATIO}'\n\
         \x20   interval: 100ms\n\
         \x20   count: 10\n\
         \x20   failure_limit: 1\n\
         \x20   success_condition: result < 0.01\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &[prometheus.addr.to_string()]), &[]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("verify"), "failed");
    assert_eq!(
        run.error("verify"),
        (
            "failed",
            "metrics red: error_rate 0.052 breached result < 0.01 (2 failed, limit 1)"
        )
    );
    // It fails fast: two measurements, not the ten of `count`.
    let outputs = &run.step("verify")["outputs"];
    assert_eq!(outcomes(outputs), ["Failed", "Failed"]);
    assert_eq!(outputs["verdict"], "Failed");
    assert_eq!(outputs["metrics"]["error_rate"]["failed"], 2);
    assert_eq!(run.status("rollback"), "succeeded");
}

#[test]
fn a_query_error_counts_as_error_not_failed_until_the_consecutive_error_limit() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    let dir = TestDir::new();
    let hosts = [prometheus.addr.to_string()];

    // A metric the app does not have: Prometheus answers with an empty vector.
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: latency\n\
         \x20   query: 'sum(no_such_metric_seconds)'\n\
         \x20   interval: 50ms\n\
         \x20   count: 2\n\
         \x20   consecutive_error_limit: 2\n\
         \x20   success_condition: result < 0.5\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &hosts), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let (kind, message) = run.error("verify");
    assert_eq!(kind, "failed");
    assert!(
        message.starts_with("metrics errored: latency errored 3 times in a row (limit 2): ")
            && message.contains("empty result"),
        "{message}"
    );
    let outputs = &run.step("verify")["outputs"];
    assert_eq!(outcomes(outputs), ["Error"; 3]);
    assert_eq!(outputs["verdict"], "Error");
    assert_eq!(outputs["metrics"]["latency"]["failed"], 0);
    assert_eq!(outputs["metrics"]["latency"]["error"], 3);
    assert!(outputs["measurements"][0]["value"].is_null());
    assert_eq!(run.status("rollback"), "succeeded");

    // Bad PromQL: Prometheus refuses it with `bad_data`, which is an Error too.
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: broken\n\
         \x20   query: 'sum(http_requests_total'\n\
         \x20   consecutive_error_limit: 0\n\
         \x20   success_condition: result < 0.5\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &hosts), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let (_, message) = run.error("verify");
    assert!(
        message.starts_with("metrics errored: broken errored 1 times in a row (limit 0): ")
            && message.contains("bad_data"),
        "{message}"
    );
    assert_eq!(outcomes(&run.step("verify")["outputs"]), ["Error"]);
}

// Conditions copied from an AnalysisTemplate were refused: `isNaN(result) || ...` did not
// parse ("Unknown function"), and `result[0]` could not index a number.
#[test]
fn conditions_written_for_argo_work_unchanged() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    prometheus.wait_for(ERROR_RATIO, "0.004");
    let dir = TestDir::new();
    let metric = |name: &str, query: &str, condition: &str| {
        format!(
            "\x20 - name: {name}\n\
             \x20   query: '{query}'\n\
             \x20   interval: 50ms\n\
             \x20   count: 2\n\
             \x20   success_condition: {condition}\n"
        )
    };
    let scalar = format!("scalar({ERROR_RATIO})");
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n{}{}{}{}",
        prometheus.url(),
        // A one-series vector, as Argo's documentation writes every condition.
        metric("vector", ERROR_RATIO, "result[0] < 0.01"),
        metric(
            "guarded",
            ERROR_RATIO,
            "'isNaN(result[0]) || result[0] < 0.01'"
        ),
        metric("defaulted", ERROR_RATIO, "'default(result[0], 0) < 0.01'"),
        // A scalar answer.
        metric(
            "scalar",
            &scalar,
            "'!isInf(result) && asFloat(result) < 0.01'"
        ),
    );
    let run = dir.run(&workflow(&with, &[prometheus.addr.to_string()]), &[]);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let outputs = &run.step("verify")["outputs"];
    assert_eq!(outcomes(outputs), ["Successful"; 8]);
    // The chart's line is found through `result[0]` too.
    assert_eq!(
        outputs["metrics"]["vector"]["threshold"],
        serde_json::json!({ "op": "<", "value": 0.01 })
    );
}

// Argo hands a `+Inf` to the conditions, where `isInf(result) || result < 0.01` calls it
// Successful; a division by zero says nothing about the release, so here it is an Error.
#[test]
fn an_infinite_result_is_an_error_whatever_the_condition() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    let dir = TestDir::new();
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: error_rate\n\
         \x20   query: 'sum(http_requests_total) / 0'\n\
         \x20   consecutive_error_limit: 0\n\
         \x20   success_condition: 'isInf(result) || result < 0.01'\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &[prometheus.addr.to_string()]), &[]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify"),
        (
            "failed",
            "metrics errored: error_rate errored 1 times in a row (limit 0): the result is `+Inf` (a division by zero gives it); it is neither good nor bad"
        )
    );
    assert_eq!(outcomes(&run.step("verify")["outputs"]), ["Error"]);
}

#[test]
fn neither_condition_met_is_inconclusive() {
    let app = App::start(&requests(1000, 30));
    let prometheus = Prometheus::scraping(&app.host());
    prometheus.wait_for("error_ratio", "0.03");
    let dir = TestDir::new();
    let with = format!(
        "provider: prometheus\n\
         address: {}\n\
         metrics:\n\
         \x20 - name: error_rate\n\
         \x20   query: 'max(error_ratio)'\n\
         \x20   interval: 50ms\n\
         \x20   count: 3\n\
         \x20   success_condition: result < 0.01\n\
         \x20   failure_condition: result > 0.05\n",
        prometheus.url()
    );
    let run = dir.run(&workflow(&with, &[prometheus.addr.to_string()]), &[]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify"),
        (
            "failed",
            "metrics inconclusive: error_rate 0.03 met neither result < 0.01 nor result > 0.05 (1 inconclusive, limit 0)"
        )
    );
    let outputs = &run.step("verify")["outputs"];
    assert_eq!(outcomes(outputs), ["Inconclusive"]);
    assert_eq!(outputs["verdict"], "Inconclusive");
    assert_eq!(run.status("rollback"), "succeeded");
}

/// A workflow that routes on `verify`'s verdict, as docs/workflows.md shows: an Inconclusive
/// canary is held for a person (`hold`), a Failed one is rolled back (`rollback`).
fn routed_on_the_verdict(app: &App) -> String {
    let with: String = error_rate_scrape(app)
        .replace(
            "    success_condition: result < 0.01\n",
            "    success_condition: result < 0.01\n    failure_condition: result > 0.05\n",
        )
        .lines()
        .map(|l| format!("      {l}\n"))
        .collect();
    format!(
        "name: verify-release\n\
         steps:\n\
         \x20 - id: verify\n\
         \x20   uses: metrics-verifier\n\
         \x20   allow: {{ http: [\"{}\"] }}\n\
         \x20   with:\n{with}\
         \x20 - id: hold\n\
         \x20   uses: echo\n\
         \x20   needs: verify\n\
         \x20   if: failure() && steps.verify.outputs.verdict == 'Inconclusive'\n\
         \x20   with: {{ message: holding the release for a person to look at }}\n\
         on_failure:\n\
         \x20 - id: rollback\n\
         \x20   uses: echo\n\
         \x20   if: steps.verify.outputs.verdict != 'Inconclusive'\n\
         \x20   with: {{ message: rolling back }}\n",
        app.host()
    )
}

// Too many Inconclusive measurements fail the step, as in Argo, but a workflow must still be
// able to tell them from a breach: hold an inconclusive canary, roll back a bad one.
#[test]
fn a_workflow_routes_an_inconclusive_verdict_apart_from_a_failed_one() {
    let dir = TestDir::new();

    // 3% of requests fail: neither below 1% nor above 5%.
    let app = App::start(&requests(1000, 30));
    let run = dir.run(&routed_on_the_verdict(&app), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.status("verify"), "failed");
    assert_eq!(run.step("verify")["outputs"]["verdict"], "Inconclusive");
    assert_eq!(run.status("hold"), "succeeded");
    assert_eq!(run.status("rollback"), "skipped");

    // 10% fail: a breach.
    app.set(&requests(1000, 100));
    let run = dir.run(&routed_on_the_verdict(&app), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.step("verify")["outputs"]["verdict"], "Failed");
    assert_eq!(run.status("hold"), "skipped");
    assert_eq!(run.status("rollback"), "succeeded");
}

// Issue 18: with `on_inconclusive: succeed` an Inconclusive verdict does not fail the step, so
// a later step (an approval) can route on it; a Failed verdict still fails it.
#[test]
fn on_inconclusive_succeed_passes_an_inconclusive_verdict_on_and_still_fails_a_breach() {
    let dir = TestDir::new();
    let app = App::start(&requests(1000, 30));
    let routed = |app: &App| {
        routed_on_the_verdict(app)
            .replace(
                "      provider:",
                "      on_inconclusive: succeed\n      provider:",
            )
            .replace("if: failure() && steps.verify", "if: steps.verify")
    };
    let run = dir.run(&routed(&app), &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let verify = run.step("verify");
    assert_eq!(verify["status"], "succeeded");
    assert_eq!(verify["outputs"]["verdict"], "Inconclusive");
    assert!(
        verify["summary"]
            .as_str()
            .unwrap()
            .starts_with("metrics inconclusive: error_rate 0.03 met neither"),
        "{verify}"
    );
    assert_eq!(run.status("hold"), "succeeded");

    app.set(&requests(1000, 100));
    let run = dir.run(&routed(&app), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(run.step("verify")["outputs"]["verdict"], "Failed");
    assert_eq!(run.status("rollback"), "succeeded");
}

#[test]
fn the_scrape_provider_reads_the_app_directly() {
    let app = App::start(&requests(1000, 4));
    let dir = TestDir::new();
    let url = format!("http://{}/metrics", app.host());
    let with = format!(
        "provider: scrape\n\
         address: {url}\n\
         token_secret: METRICS_TOKEN\n\
         metrics:\n\
         \x20 - name: server_errors\n\
         \x20   series: http_requests_total\n\
         \x20   labels: {{ code: \"500\" }}\n\
         \x20   interval: 50ms\n\
         \x20   count: 2\n\
         \x20   success_condition: result <= 10\n\
         \x20 - name: error_rate\n\
         \x20   series: error_ratio\n\
         \x20   interval: 50ms\n\
         \x20   count: 2\n\
         \x20   failure_condition: result > 0.05\n"
    );
    let yaml = workflow(&with, &[app.host()])
        .replace("      http:", "      secrets: [METRICS_TOKEN]\n      http:");
    dir.write("workflow.yaml", &yaml);
    let mut command = dir.shiphat();
    command
        .args(["run", "workflow.yaml", "--json"])
        .env("METRICS_TOKEN", "s3cret-token");
    let run = support::Run::of(command);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let step = run.step("verify");
    assert_eq!(
        step["summary"],
        "metrics green: server_errors 2 of 2 passed, last 4; error_rate 2 of 2 passed, last 0.004"
    );
    // Interleaved by time: both metrics are due at once, then every 50 ms.
    let metrics: Vec<&str> = step["outputs"]["measurements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["metric"].as_str().unwrap())
        .collect();
    assert_eq!(
        metrics,
        ["server_errors", "error_rate", "server_errors", "error_rate"]
    );
    assert_eq!(app.authorization().as_deref(), Some("Bearer s3cret-token"));

    // Without labels the series is ambiguous: an Error naming the candidates, not a value.
    let with = format!(
        "provider: scrape\n\
         address: {url}\n\
         metrics:\n\
         \x20 - name: requests\n\
         \x20   series: http_requests_total\n\
         \x20   consecutive_error_limit: 0\n\
         \x20   success_condition: result > 0\n"
    );
    let run = dir.run(&workflow(&with, &[app.host()]), &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let (_, message) = run.error("verify");
    assert!(
        message.contains("2 series match `http_requests_total`")
            && message.contains(r#"http_requests_total{code="500"}"#),
        "{message}"
    );
}

/// One metric, `error_rate`, scraped from `app` and judged by `result < 0.01`.
fn error_rate_scrape(app: &App) -> String {
    format!(
        "provider: scrape\n\
         address: http://{}/metrics\n\
         metrics:\n\
         \x20 - name: error_rate\n\
         \x20   series: error_ratio\n\
         \x20   success_condition: result < 0.01\n",
        app.host()
    )
}

// `count: 2, failure_limit: 3` was accepted, and a release whose every measurement failed
// ended "metrics green": two failures never exceed a limit of three.
#[test]
fn count_below_failure_limit_is_refused_before_measuring() {
    let app = App::start(&requests(1000, 100));
    let dir = TestDir::new();
    let with = error_rate_scrape(&app).replace(
        "    success_condition:",
        "    interval: 50ms\n    count: 2\n    failure_limit: 3\n    success_condition:",
    );
    let run = dir.run(&workflow(&with, &[app.host()]), &[]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify"),
        (
            "invalid_config",
            "metric `error_rate`: `count` is 2 but `failure_limit` is 3: 2 measurements can never exceed the limit, so the metric could never fail; raise `count` to at least 3 or lower `failure_limit`"
        )
    );
    assert!(
        app.server.requests().is_empty(),
        "the app was measured before the settings were checked"
    );
    assert_eq!(run.status("rollback"), "succeeded");
}

// A run that passed within its `failure_limit` said `metrics green: error_rate 0.2 < 0.01
// (3/3)`: the last value, which failed, beside the condition it failed.
#[test]
fn the_summary_of_a_pass_within_the_failure_limit_counts_the_failure() {
    let app = App::sequence(&[requests(1000, 4), requests(1000, 4), requests(1000, 200)]);
    let dir = TestDir::new();
    let with = error_rate_scrape(&app).replace(
        "    success_condition:",
        "    interval: 50ms\n    count: 3\n    failure_limit: 1\n    success_condition:",
    );
    let run = dir.run(&workflow(&with, &[app.host()]), &[]);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.step("verify")["summary"],
        "metrics green: error_rate 2 of 3 passed, 1 failed (limit 1), last 0.2"
    );
    assert_eq!(
        outcomes(&run.step("verify")["outputs"]),
        ["Successful", "Successful", "Failed"]
    );
}

#[test]
fn a_dry_run_still_measures() {
    let app = App::start(&requests(1000, 100));
    let dir = TestDir::new();
    let with = error_rate_scrape(&app);
    let run = dir.run(&workflow(&with, &[app.host()]), &["--dry-run"]);

    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify").1,
        "metrics red: error_rate 0.1 breached result < 0.01 (1 failed, limit 0)"
    );
}

#[test]
fn a_condition_that_does_not_parse_is_invalid_config_naming_the_metric() {
    let dir = TestDir::new();
    let with = "provider: scrape\n\
                address: http://127.0.0.1:9/metrics\n\
                metrics:\n\
                \x20 - name: error_rate\n\
                \x20   series: error_ratio\n\
                \x20   success_condition: 'result <'\n";
    let run = dir.run(&workflow(with, &["127.0.0.1:9".into()]), &[]);

    assert_ne!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let (kind, message) = run.error("verify");
    assert_eq!(kind, "invalid_config");
    assert!(
        message.starts_with("metric `error_rate`: `success_condition` `result <` does not parse: "),
        "{message}"
    );
}

#[test]
fn an_address_not_granted_is_invalid_config() {
    let app = App::start(&requests(1000, 4));
    let dir = TestDir::new();
    let with = error_rate_scrape(&app);
    // Written literally, `validate` names the grant before anything runs.
    let run = dir.run(&workflow(&with, &["127.0.0.1:9".into()]), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "does not grant `{}`; add `{}`",
            app.host(),
            app.host()
        )),
        "{}",
        run.stderr
    );
    // From an expression, the plugin refuses it when the step runs.
    let address = format!("http://{}/metrics", app.host());
    let yaml = workflow(
        &with.replace(&address, "${{ inputs.address }}"),
        &["127.0.0.1:9".into()],
    )
    .replace(
        "name: verify-release\n",
        &format!(
            "name: verify-release\ninputs:\n  address: {{ type: string, default: \"{address}\" }}\n"
        ),
    );
    let run = dir.run(&yaml, &[]);

    let (kind, message) = run.error("verify");
    assert_eq!(kind, "invalid_config");
    assert!(
        message.contains("add it to the step's `allow.http`"),
        "{message}"
    );
}

#[test]
fn the_schema_refuses_unknown_keys_before_anything_runs() {
    let dir = TestDir::new();
    let with = "provider: prometheus\n\
                address: http://127.0.0.1:9\n\
                metrics:\n\
                \x20 - name: error_rate\n\
                \x20   query: up\n\
                \x20   sucess_condition: result == 1\n";
    let run = dir.run(&workflow(with, &["127.0.0.1:9".into()]), &[]);

    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("sucess_condition"), "{}", run.stderr);
}

/// Copies the AnalysisTemplate fixture `name` (tests/fixtures/argo) into `dir` at `dest`.
fn argo_template(dir: &TestDir, name: &str, dest: &str) {
    let text = std::fs::read_to_string(support::root().join("tests/fixtures/argo").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"));
    dir.write(dest, text);
}

/// A workflow whose one step `verify` measures the template at `template` with `args` (a
/// flow mapping), granted `allow` (a flow mapping's inside).
fn template_workflow(template: &str, args: &str, allow: &str) -> String {
    format!(
        "name: canary\n\
         steps:\n\
         \x20 - id: verify\n\
         \x20   uses: metrics-verifier\n\
         \x20   allow: {{ {allow} }}\n\
         \x20   with:\n\
         \x20     template: {template}\n\
         \x20     args: {args}\n"
    )
}

// An AnalysisTemplate could not be used at all: its metrics had to be rewritten by hand into
// `with:`, key by key, and its `{{args.NAME}}` filled in.
#[test]
fn an_argo_analysis_template_runs_as_written() {
    let app = App::start(&requests(1000, 4));
    let prometheus = Prometheus::scraping(&app.host());
    prometheus.wait_for(ERROR_RATIO, "0.004");
    let dir = TestDir::new();
    argo_template(&dir, "success-rate.yaml", "analysis.yaml");
    let yaml = template_workflow(
        "./analysis.yaml",
        &format!(
            "{{ service-name: app, prometheus-port: \"{}\" }}",
            prometheus.addr.port()
        ),
        &format!("read: [\".\"], http: [\"{}\"]", prometheus.addr),
    );
    let run = dir.run(&yaml, &[]);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let step = run.step("verify");
    assert_eq!(
        step["summary"],
        "metrics green: success-rate 3 of 3 passed, last 0.996"
    );
    assert_eq!(outcomes(&step["outputs"]), ["Successful"; 3]);
    assert_eq!(
        step["outputs"]["metrics"]["success-rate"]["success_condition"],
        "result[0] >= 0.95"
    );

    // The release breaks: its `failureLimit: 1` tolerates one failure, not two.
    app.set(&requests(1000, 100));
    prometheus.wait_for(ERROR_RATIO, "0.1");
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify"),
        (
            "failed",
            "metrics red: success-rate 0.9 breached result[0] >= 0.95 (2 failed, limit 1)"
        )
    );
}

// The web provider of an AnalysisTemplate, as Argo's docs write it: the token Argo reads from
// a Kubernetes secret comes from a granted secret, and the condition reads an object.
#[test]
fn an_argo_web_metric_runs_as_written() {
    let api = Server::start(|_, _| {
        Reply::json(
            200,
            &serde_json::json!({ "data": { "ok": true, "successPercent": 0.95 } }),
        )
    });
    let dir = TestDir::new();
    argo_template(&dir, "web-success.yaml", "analysis/web.yaml");
    let yaml = template_workflow(
        "analysis/web.yaml",
        &format!(
            "{{ api-url: \"{}\", api-token: {{ secret: API_TOKEN }} }}",
            api.url("/measure")
        ),
        &format!(
            "read: [analysis], http: [\"{}\"], secrets: [API_TOKEN]",
            api.host()
        ),
    );
    dir.write("workflow.yaml", &yaml);
    let mut command = dir.shiphat();
    command
        .args(["run", "workflow.yaml", "--json"])
        .env("API_TOKEN", "t0ken");
    let run = support::Run::of(command);

    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let outputs = &run.step("verify")["outputs"];
    assert_eq!(outcomes(outputs), ["Successful"]);
    assert_eq!(
        outputs["measurements"][0]["value"],
        serde_json::json!({ "ok": true, "successPercent": 0.95 })
    );
    let requests = api.requests();
    let [request] = requests.as_slice() else {
        panic!("{requests:?}")
    };
    assert_eq!(request.target, "/measure?service=guestbook");
    assert_eq!(request.header("authorization"), Some("Bearer t0ken"));
}

// What a step cannot honour is refused by name before anything is measured, not ignored.
#[test]
fn an_argo_template_with_a_job_metric_is_refused_by_name() {
    let dir = TestDir::new();
    argo_template(&dir, "job.yaml", "analysis/job.yaml");
    let run = dir.run(
        &template_workflow("analysis/job.yaml", "{}", "read: [analysis]"),
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(
        run.error("verify"),
        (
            "invalid_config",
            "`template` `analysis/job.yaml`: metric `test`: the `job` provider is not supported; this plugin measures with `prometheus` and `web` (or, outside templates, `scrape`)"
        )
    );

    // The template is read through `allow.read`, and `validate` says so before anything runs.
    let run = dir.run(
        &template_workflow("analysis/job.yaml", "{}", "http: [\"127.0.0.1:9\"]"),
        &[],
    );
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the step reads `analysis/job.yaml` but `allow.read` does not grant it"),
        "{}",
        run.stderr
    );
}
