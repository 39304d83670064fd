//! The events a run emits, in order. Every front end consumes the same stream: the CLI prints
//! them (or writes them as JSON Lines with `--json`), the daemon stores and streams them.
//! The JSON shape is a public, documented interface (docs/events.md): fields may be added,
//! never renamed or removed.

use serde::Serialize;

/// Which part of the workflow a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Steps,
    OnFailure,
    Finally,
}

impl Section {
    /// The section's key in the workflow file.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Steps => "steps",
            Section::OnFailure => "on_failure",
            Section::Finally => "finally",
        }
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
        }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Succeeded,
    Failed,
    Cancelled,
}

/// Why a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The plugin said no (`step-error::failed`).
    Failed,
    /// The `with:` block was refused, by the schema or by the plugin.
    InvalidConfig,
    /// The plugin reported a passing condition and the retries ran out.
    Transient,
    /// The step ran past its `timeout`.
    Timeout,
    /// The plugin hit its `memory` limit (all its memories and tables together), or a step's
    /// cap on instances, memories or tables.
    Memory,
    /// The plugin overflowed its wasm `stack`.
    StackOverflow,
    /// The plugin panicked.
    Panic,
    /// The plugin trapped for another reason, or held more host objects than a step may.
    Trap,
    /// The plugin's outputs broke the contract.
    BadOutput,
    /// The step could not start: a plugin that would not load, a grant that would not open,
    /// an expression that would not evaluate.
    Setup,
    /// The run was cancelled while the step ran.
    Cancelled,
}

/// A failed step's error.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

/// A step as announced in `run_started`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepHeader {
    pub id: String,
    pub name: String,
    pub section: Section,
}

/// One event of a run. Serialised with an `event` tag, e.g. `{"event":"step_started",...}`.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        workflow: String,
        dry_run: bool,
        steps: Vec<StepHeader>,
        time: String,
    },
    StepStarted {
        run_id: String,
        step: String,
        name: String,
        section: Section,
        attempt: u32,
        time: String,
    },
    Log {
        run_id: String,
        step: String,
        level: &'static str,
        source: &'static str,
        message: String,
        time: String,
    },
    StepFinished {
        run_id: String,
        step: String,
        name: String,
        section: Section,
        status: StepStatus,
        attempts: u32,
        duration_ms: f64,
        summary: String,
        outputs: serde_json::Map<String, serde_json::Value>,
        error: Option<StepError>,
        /// True when the step failed but `continue_on_error` let the run go on.
        continued: bool,
        time: String,
    },
    RunFinished {
        run_id: String,
        workflow: String,
        status: RunStatus,
        duration_ms: f64,
        /// The ids of the steps that failed, in the order they finished.
        failed_steps: Vec<String>,
        time: String,
    },
}

/// Now, as an RFC 3339 timestamp in UTC with milliseconds.
pub(crate) fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
