//! The rules of an Argo Rollouts AnalysisRun: what one measurement is, and when a metric is
//! done. Pure logic: no clock, no network.

use crate::config::Metric;

/// What one measurement read.
#[derive(Clone, PartialEq, Debug)]
pub enum Reading {
    /// A number: from Prometheus, a scraped page, or a number in a `web` answer.
    Number(f64),
    /// Anything else a `web` answer holds at its `jsonPath` (`true`, `"ok"`, `{"ok": true}`),
    /// handed to the conditions as Argo hands it.
    Json(serde_json::Value),
}

impl Reading {
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Reading::Number(n) => (*n).into(),
            Reading::Json(value) => value.clone(),
        }
    }
}

impl std::fmt::Display for Reading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reading::Number(n) => write!(f, "{n}"),
            Reading::Json(value) => write!(f, "{value}"),
        }
    }
}

/// What one measurement is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Successful,
    Failed,
    Inconclusive,
    /// No value (the query failed, the result was empty, NaN, or not one number), or a
    /// condition could not be evaluated. Never a success, and not counted towards `count`.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Successful => "Successful",
            Outcome::Failed => "Failed",
            Outcome::Inconclusive => "Inconclusive",
            Outcome::Error => "Error",
        }
    }
}

/// Where a metric stands. The order is Argo's, from best to worst: the step's verdict is the
/// worst of its metrics'.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Verdict {
    Successful,
    /// Still measuring; or, in the outputs, stopped because another metric ended the step.
    Running,
    Inconclusive,
    Error,
    Failed,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Successful => "Successful",
            Verdict::Running => "Stopped",
            Verdict::Inconclusive => "Inconclusive",
            Verdict::Error => "Error",
            Verdict::Failed => "Failed",
        }
    }
}

/// The measurements of one metric so far.
#[derive(Default)]
pub struct Tally {
    pub successful: u32,
    pub failed: u32,
    pub inconclusive: u32,
    pub error: u32,
    pub consecutive_errors: u32,
    /// The last value measured, and the outcome it had.
    pub last: Option<(Reading, Outcome)>,
    pub last_error: Option<String>,
}

impl Tally {
    /// The measurements that count towards `count`: every one but the Errors.
    pub fn counted(&self) -> u32 {
        self.successful + self.failed + self.inconclusive
    }

    pub fn record(&mut self, outcome: Outcome, value: Option<Reading>) {
        match outcome {
            Outcome::Successful => self.successful += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Inconclusive => self.inconclusive += 1,
            Outcome::Error => self.error += 1,
        }
        if outcome == Outcome::Error {
            self.consecutive_errors += 1;
        } else {
            self.consecutive_errors = 0;
        }
        if let Some(value) = value {
            self.last = Some((value, outcome));
        }
    }
}

/// The outcome of a measured value, as Argo decides it: with only a success condition, false
/// is Failed; with only a failure condition, false is Successful; with both, a true failure
/// condition wins and neither true is Inconclusive.
pub fn evaluate(metric: &Metric, result: &Reading) -> Result<Outcome, String> {
    let check = |condition: &crate::condition::Condition| {
        condition
            .eval(result)
            .map_err(|e| format!("`{}` cannot be evaluated: {e}", condition.text))
    };
    let success = metric.success.as_ref().map(check).transpose()?;
    let failure = metric.failure.as_ref().map(check).transpose()?;
    let (success, failure) = match (success, failure) {
        (Some(s), None) => (s, !s),
        (None, Some(f)) => (!f, f),
        (Some(s), Some(f)) => (s, f),
        // The configuration requires at least one condition.
        (None, None) => (true, false),
    };
    Ok(if failure {
        Outcome::Failed
    } else if success {
        Outcome::Successful
    } else {
        Outcome::Inconclusive
    })
}

/// Whether the metric is done, and how. Limits are checked first, after every measurement,
/// so a metric fails as soon as it breaches one instead of waiting out `count`.
pub fn assess(metric: &Metric, tally: &Tally) -> Verdict {
    if tally.failed > metric.failure_limit {
        Verdict::Failed
    } else if tally.inconclusive > metric.inconclusive_limit {
        Verdict::Inconclusive
    } else if tally.consecutive_errors > metric.consecutive_error_limit {
        Verdict::Error
    } else if tally.counted() >= metric.count {
        Verdict::Successful
    } else {
        Verdict::Running
    }
}
