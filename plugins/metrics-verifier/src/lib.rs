//! The `metrics-verifier` plugin: verifies a release by its metrics, with the measurement
//! rules of an Argo Rollouts AnalysisRun.
//!
//! Each metric is measured `count` times, `interval` apart, after `initial_delay`: an instant
//! PromQL query to a Prometheus server, or one series read straight from an app's `/metrics`
//! page. Each value is judged by `success_condition` / `failure_condition` (expr-lang
//! expressions over `result`) as Successful, Failed or Inconclusive; a measurement without a
//! value is an Error. The step fails as soon as a metric goes over one of its limits, and
//! otherwise succeeds once every metric has its `count`. The metrics' measurements are
//! interleaved by time, as Argo does.
//!
//! The metrics are listed in `with:`, or read from an Argo `AnalysisTemplate` file
//! (`template.rs`), whose `web` metrics ask a URL and judge the JSON value it answers.
//!
//! It only reads, so a dry run measures too. It does not roll anything back: a workflow does
//! that in `on_failure`.

mod analysis;
mod condition;
mod config;
mod provider;
mod template;

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value, json};
use shiphat_plugin_sdk::{
    self as sdk, Guest, Output, PluginInfo, StepError, StepInput, StepOutput,
};

use analysis::{Outcome, Reading, Tally, Verdict};
use config::Metric;
use provider::Problem;

/// The longest wait before retrying a metric whose last measurement was an Error, when its
/// `interval` is longer. Argo Rollouts uses the same ten seconds: an error is often a blip,
/// and waiting a whole `interval` to find out would stretch `consecutive_error_limit` errors
/// into many minutes.
const ERROR_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The most measurements the outputs list; later ones are counted in
/// `measurements_omitted`. At about 130 bytes each this keeps the outputs near half of the
/// engine's 1 MiB limit, whatever the number of metrics.
const MAX_RECORDED: usize = 4000;

struct MetricsVerifier;

impl Guest for MetricsVerifier {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Measures Prometheus queries or scraped metrics against success and failure conditions, Argo Rollouts-style, and fails the step when they breach.".into(),
            config_schema: config::schema().to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config::Config {
            metrics,
            on_inconclusive,
            replay_at,
        } = config::parse(&input.config)?;
        if input.context.dry_run {
            sdk::info("dry run: measuring anyway, since measuring only reads");
        }
        for metric in &metrics {
            sdk::info(&format!(
                "measuring {}: {} {} time(s), every {}, after {}",
                metric.name,
                match &metric.source {
                    config::Source::Prometheus { query, .. } => format!("`{query}`"),
                    config::Source::Scrape { url, series, .. } => format!("`{series}` at {url}"),
                    config::Source::Web {
                        url,
                        method,
                        json_path,
                        ..
                    } => {
                        format!("`{}` of {method} {url}", json_path.text)
                    }
                },
                metric.count,
                humantime::format_duration(metric.interval),
                humantime::format_duration(metric.initial_delay),
            ));
        }
        let clock = match replay_at {
            Some(at) => {
                sdk::info(&format!(
                    "replaying from {}: each measurement is what Prometheus answers for its time",
                    humantime::format_rfc3339(at)
                ));
                Clock::Replay {
                    at,
                    now: Duration::ZERO,
                }
            }
            None => Clock::Live(Instant::now()),
        };
        Analysis::new(&metrics, on_inconclusive, clock).run()
    }
}

/// The analysis's time, as an offset from its start.
enum Clock {
    /// Real time: a measurement waits for its turn.
    Live(Instant),
    /// A past start (`replay_at`), and how far the replay has come from it: waiting moves it
    /// on at once, and each measurement asks for the value at its own time. The schedule is
    /// the live one, so a replay takes the measurements a live run would have taken.
    Replay { at: SystemTime, now: Duration },
}

impl Clock {
    fn now(&self) -> Duration {
        match self {
            Clock::Live(start) => start.elapsed(),
            Clock::Replay { now, .. } => *now,
        }
    }

    fn wait_until(&mut self, due: Duration) {
        match self {
            Clock::Live(start) => {
                let wait = due.saturating_sub(start.elapsed());
                if !wait.is_zero() {
                    // One blocking `wasi:clocks` call: the host sleeps, not the guest.
                    std::thread::sleep(wait);
                }
            }
            Clock::Replay { now, .. } => *now = (*now).max(due),
        }
    }

    /// The time a measurement taken now is of: `None` for now itself.
    fn past(&self) -> Option<SystemTime> {
        match self {
            Clock::Live(_) => None,
            Clock::Replay { at, now } => Some(*at + *now),
        }
    }
}

/// One run over all the metrics.
struct Analysis<'a> {
    metrics: &'a [Metric],
    on_inconclusive: config::OnInconclusive,
    tallies: Vec<Tally>,
    verdicts: Vec<Verdict>,
    clock: Clock,
    /// When each running metric is next due, from the start.
    due: Vec<Duration>,
    measurements: Vec<Value>,
    omitted: usize,
}

impl<'a> Analysis<'a> {
    fn new(metrics: &'a [Metric], on_inconclusive: config::OnInconclusive, clock: Clock) -> Self {
        Analysis {
            metrics,
            on_inconclusive,
            tallies: metrics.iter().map(|_| Tally::default()).collect(),
            verdicts: vec![Verdict::Running; metrics.len()],
            clock,
            due: metrics.iter().map(|m| m.initial_delay).collect(),
            measurements: Vec::new(),
            omitted: 0,
        }
    }

    fn run(mut self) -> Result<StepOutput, StepError> {
        // The earliest due running metric is measured next; ties go to the one listed first.
        while let Some(i) = (0..self.metrics.len())
            .filter(|&i| self.verdicts[i] == Verdict::Running)
            .min_by_key(|&i| self.due[i])
        {
            self.clock.wait_until(self.due[i]);
            let started = self.clock.now();
            self.measure(i)?;
            let metric = &self.metrics[i];
            let verdict = analysis::assess(metric, &self.tallies[i]);
            self.verdicts[i] = verdict;
            match verdict {
                Verdict::Running => {
                    let errored = self.tallies[i].consecutive_errors > 0;
                    let next = if errored {
                        metric.interval.min(ERROR_RETRY_INTERVAL)
                    } else {
                        metric.interval
                    };
                    self.due[i] = started + next;
                }
                Verdict::Successful => {}
                // Asked to, an Inconclusive metric stops being measured but does not fail the
                // step: the other metrics go on, and a Failed one still fails it.
                Verdict::Inconclusive
                    if self.on_inconclusive == config::OnInconclusive::Succeed =>
                {
                    sdk::warn(&self.failure_message(i));
                }
                // Argo ends the whole run when one metric goes bad; so does the step.
                Verdict::Failed | Verdict::Inconclusive | Verdict::Error => {
                    return Err(sdk::failed_with(self.failure_message(i), self.outputs()));
                }
            }
        }
        let (inconclusive, green): (Vec<usize>, Vec<usize>) =
            (0..self.metrics.len()).partition(|&i| self.verdicts[i] == Verdict::Inconclusive);
        let green = green
            .into_iter()
            .map(|i| self.passed(i))
            .collect::<Vec<_>>();
        let summary = if inconclusive.is_empty() {
            format!("metrics green: {}", green.join("; "))
        } else {
            // `failure_message` opens with "metrics inconclusive: ".
            let mut parts: Vec<String> = inconclusive
                .iter()
                .map(|&i| self.failure_message(i))
                .collect();
            if !green.is_empty() {
                parts.push(format!("green: {}", green.join("; ")));
            }
            parts.join("; ")
        };
        let outputs = self.outputs();
        let Value::Object(outputs) = outputs else {
            unreachable!("outputs are an object")
        };
        let mut output = Output::new(summary);
        for (key, value) in outputs {
            output = output.set(key, value);
        }
        Ok(output.into())
    }

    /// Takes one measurement of metric `i`, logs it and records it.
    fn measure(&mut self, i: usize) -> Result<(), StepError> {
        let metric = &self.metrics[i];
        let past = self.clock.past();
        let time = humantime::format_rfc3339_millis(past.unwrap_or_else(SystemTime::now));
        let (outcome, value, error) = match provider::measure(metric, past) {
            Ok(value) => match analysis::evaluate(metric, &value) {
                Ok(outcome) => (outcome, Some(value), None),
                Err(e) => (Outcome::Error, Some(value), Some(e)),
            },
            Err(Problem::Error(e)) => (Outcome::Error, None, Some(e)),
            Err(Problem::Denied(e)) => {
                return Err(sdk::invalid_config(format!(
                    "metric `{}`: {e}",
                    metric.name
                )));
            }
        };
        let recorded = value.as_ref().map(Reading::to_json);
        let shown = value.as_ref().map_or("none".into(), Reading::to_string);
        let tally = &mut self.tallies[i];
        tally.record(outcome, value);
        match &error {
            None => sdk::info(&format!(
                "{} = {} → {} ({}/{})",
                metric.name,
                shown,
                outcome.as_str(),
                tally.counted(),
                metric.count
            )),
            Some(e) => {
                sdk::warn(&format!(
                    "{} → Error ({} in a row, limit {}): {e}",
                    metric.name, tally.consecutive_errors, metric.consecutive_error_limit
                ));
                tally.last_error = Some(e.clone());
            }
        }
        if self.measurements.len() < MAX_RECORDED {
            let mut record = json!({
                "metric": metric.name,
                "value": recorded,
                "time": time.to_string(),
                "outcome": outcome.as_str(),
            });
            if let Some(e) = error {
                record["error"] = e.into();
            }
            self.measurements.push(record);
        } else {
            self.omitted += 1;
        }
        Ok(())
    }

    /// The step's outputs: every measurement, each metric's counts, and the verdict.
    fn outputs(&self) -> Value {
        let verdict = self
            .verdicts
            .iter()
            .copied()
            .max()
            .unwrap_or(Verdict::Successful);
        let mut metrics = Map::new();
        for (i, metric) in self.metrics.iter().enumerate() {
            let tally = &self.tallies[i];
            metrics.insert(
                metric.name.clone(),
                json!({
                    "verdict": self.verdicts[i].as_str(),
                    "success_condition": metric.success.as_ref().map(|c| &c.text),
                    "failure_condition": metric.failure.as_ref().map(|c| &c.text),
                    // The line a chart draws: the success condition's, else the failure's.
                    "threshold": metric
                        .success
                        .iter()
                        .chain(&metric.failure)
                        .find_map(|c| c.threshold())
                        .map(|(op, value)| json!({ "op": op, "value": value })),
                    "count": metric.count,
                    "successful": tally.successful,
                    "failed": tally.failed,
                    "inconclusive": tally.inconclusive,
                    "error": tally.error,
                }),
            );
        }
        let mut outputs = json!({
            "verdict": verdict.as_str(),
            "metrics": metrics,
            "measurements": self.measurements,
        });
        if self.omitted > 0 {
            outputs["measurements_omitted"] = self.omitted.into();
        }
        outputs
    }

    /// How metric `i` passed: what counted, not only its last value, which may be one of the
    /// failures its limits tolerated. E.g. `error_rate 2 of 3 passed, 1 failed (limit 1),
    /// last 0.2`.
    fn passed(&self, i: usize) -> String {
        let (metric, tally) = (&self.metrics[i], &self.tallies[i]);
        format!(
            "{} {}, last {}",
            metric.name,
            counts(metric, tally),
            last_value(tally)
        )
    }

    /// Why metric `i` ended the step, after `metrics red:` and the like.
    fn failure_message(&self, i: usize) -> String {
        let (metric, tally) = (&self.metrics[i], &self.tallies[i]);
        let value = last_value(tally);
        let name = &metric.name;
        match self.verdicts[i] {
            Verdict::Failed => {
                // The measurement that went over the limit is the last one, and it was Failed.
                let met = |c: &condition::Condition| {
                    tally
                        .last
                        .as_ref()
                        .is_some_and(|(v, _)| c.eval(v).unwrap_or(false))
                };
                let how = match (&metric.success, &metric.failure) {
                    (_, Some(failure)) if met(failure) => {
                        format!("met failure condition {}", failure.text)
                    }
                    (Some(success), _) => format!("breached {}", success.text),
                    (None, Some(failure)) => format!("met failure condition {}", failure.text),
                    (None, None) => "failed".into(),
                };
                format!(
                    "metrics red: {name} {value} {how} ({} failed, limit {})",
                    tally.failed, metric.failure_limit
                )
            }
            Verdict::Inconclusive => {
                let conditions: Vec<&str> = [&metric.success, &metric.failure]
                    .into_iter()
                    .flatten()
                    .map(|c| c.text.as_str())
                    .collect();
                format!(
                    "metrics inconclusive: {name} {value} met neither {} ({} inconclusive, limit {})",
                    conditions.join(" nor "),
                    tally.inconclusive,
                    metric.inconclusive_limit
                )
            }
            _ => format!(
                "metrics errored: {name} errored {} times in a row (limit {}): {}",
                tally.consecutive_errors,
                metric.consecutive_error_limit,
                tally.last_error.as_deref().unwrap_or("no detail")
            ),
        }
    }
}

/// The last value measured, for a person.
fn last_value(tally: &Tally) -> String {
    tally
        .last
        .as_ref()
        .map_or_else(|| "(no value)".into(), |(v, _)| v.to_string())
}

/// What a metric's measurements were: `3 of 3 passed`, or `2 of 3 passed, 1 failed (limit
/// 1), 1 error`. Outcomes that did not happen are left out.
fn counts(metric: &Metric, tally: &Tally) -> String {
    let mut parts = vec![format!(
        "{} of {} passed",
        tally.successful,
        tally.counted()
    )];
    if tally.failed > 0 {
        parts.push(format!(
            "{} failed (limit {})",
            tally.failed, metric.failure_limit
        ));
    }
    if tally.inconclusive > 0 {
        parts.push(format!(
            "{} inconclusive (limit {})",
            tally.inconclusive, metric.inconclusive_limit
        ));
    }
    match tally.error {
        0 => {}
        1 => parts.push("1 error".into()),
        n => parts.push(format!("{n} errors")),
    }
    parts.join(", ")
}

shiphat_plugin_sdk::export!(MetricsVerifier);
