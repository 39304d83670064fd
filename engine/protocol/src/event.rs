//! The events a run emits, in order. Every front end consumes the same stream: the CLI prints
//! them (or writes them as JSON Lines with `--json`), the daemon stores and streams them, and
//! Slack and the web page follow them. The JSON shape is documented in docs/events.md.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which part of the workflow a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    Steps,
    OnFailure,
    Finally,
}

impl Section {
    pub const ALL: [Section; 3] = [Section::Steps, Section::OnFailure, Section::Finally];

    /// The section's key in the workflow file, and its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Steps => "steps",
            Section::OnFailure => "on_failure",
            Section::Finally => "finally",
        }
    }

    pub fn parse(text: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// How a step ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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

/// How a run ended: the terminal [`crate::RunStatus`]es, which `run_finished` carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    Cancelled,
}

impl RunOutcome {
    pub fn as_str(self) -> &'static str {
        crate::RunStatus::from(self).as_str()
    }
}

/// Why a step failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
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
    /// A kind this build does not know, read from a newer daemon. Never emitted; kinds may be
    /// added, and a reader must not mistake a new one for another.
    #[serde(other)]
    Unknown,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::Transient => "transient",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::StackOverflow => "stack_overflow",
            ErrorKind::Panic => "panic",
            ErrorKind::Trap => "trap",
            ErrorKind::BadOutput => "bad_output",
            ErrorKind::Setup => "setup",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Unknown => "unknown",
        }
    }
}

/// A failed step's error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepError {
    pub kind: ErrorKind,
    pub message: String,
}

/// A step as announced in `run_started`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepHeader {
    pub id: String,
    pub name: String,
    pub section: Section,
}

/// How much a log line matters, as in the WIT `host.level` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Where a log line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// `host.log` from the plugin.
    Plugin,
    Stdout,
    Stderr,
    /// A line the engine adds: a skipped step, a retry, a refused HTTP request.
    Engine,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

impl LogSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LogSource::Plugin => "plugin",
            LogSource::Stdout => "stdout",
            LogSource::Stderr => "stderr",
            LogSource::Engine => "engine",
        }
    }
}

/// Each enum prints as its name on the wire (padded to a width when one is asked for).
macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
pub(crate) use display_as_str;

display_as_str!(
    Section, StepStatus, RunOutcome, ErrorKind, LogLevel, LogSource
);

/// One event of a run. Serialised with an `event` tag, e.g. `{"event":"step_started",...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
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
        /// The step the line belongs to; empty for a line of the run itself.
        step: String,
        level: LogLevel,
        source: LogSource,
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
        status: RunOutcome,
        duration_ms: f64,
        /// The ids of the steps that failed, in the order they finished.
        failed_steps: Vec<String>,
        time: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_error_kind_is_unknown_not_failed() {
        // The CLI once read every kind it did not know as `failed`.
        let error: StepError =
            serde_json::from_str(r#"{"kind": "quota", "message": "over"}"#).unwrap();
        assert_eq!(error.kind, ErrorKind::Unknown);
    }

    #[test]
    fn error_kinds_are_their_names_on_the_wire() {
        let kinds = [
            ErrorKind::Failed,
            ErrorKind::InvalidConfig,
            ErrorKind::Transient,
            ErrorKind::Timeout,
            ErrorKind::Memory,
            ErrorKind::StackOverflow,
            ErrorKind::Panic,
            ErrorKind::Trap,
            ErrorKind::BadOutput,
            ErrorKind::Setup,
            ErrorKind::Cancelled,
            ErrorKind::Unknown,
        ];
        for kind in kinds {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn events_read_back_as_they_were_written() {
        let text = r#"{"event":"step_finished","run_id":"r","step":"s","name":"S","section":"on_failure","status":"failed","attempts":2,"duration_ms":1.5,"summary":"","outputs":{"a":1},"error":{"kind":"timeout","message":"slow"},"continued":false,"time":"t"}"#;
        let event: Event = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&event).unwrap(), text);
        let log = r#"{"event":"log","run_id":"r","step":"","level":"warn","source":"engine","message":"m","time":"t"}"#;
        let event: Event = serde_json::from_str(log).unwrap();
        assert_eq!(serde_json::to_string(&event).unwrap(), log);
    }
}
