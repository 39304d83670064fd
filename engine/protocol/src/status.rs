//! Where a run and its steps are, as the store keeps them and the API answers them, and what
//! follows from them.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::event::{RunOutcome, Section, StepStatus, display_as_str};

/// Where a run is. `Queued` and `Interrupted` wait; `Running` is in progress; the others are
/// terminal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Accepted, waiting for its concurrency key or for the daemon to start it.
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// The daemon stopped (crash or shutdown) while it ran; waits for `resume` or `cancel`,
    /// or resumes by itself when its workflow allows it.
    Interrupted,
    /// Running, and waiting at an approval step for people to decide. Only the API says it:
    /// the store keeps such a run `running` (it holds its concurrency key and its lease), so
    /// it is not among [`RunStatus::ALL`].
    Waiting,
}

impl RunStatus {
    /// The statuses the store keeps.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
        RunStatus::Interrupted,
    ];

    /// The statuses a run ends in.
    pub const TERMINAL: [RunStatus; 3] = [
        RunStatus::Succeeded,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Waiting => "waiting",
        }
    }

    pub fn parse(text: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        RunStatus::TERMINAL.contains(&self)
    }
}

impl From<RunOutcome> for RunStatus {
    fn from(outcome: RunOutcome) -> RunStatus {
        match outcome {
            RunOutcome::Succeeded => RunStatus::Succeeded,
            RunOutcome::Failed => RunStatus::Failed,
            RunOutcome::Cancelled => RunStatus::Cancelled,
        }
    }
}

/// Where a step is: `Running` while an attempt runs, `Interrupted` when the daemon stopped
/// during it, or how it ended (a [`StepStatus`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    Interrupted,
}

impl StepState {
    pub const ALL: [StepState; 6] = [
        StepState::Running,
        StepState::Succeeded,
        StepState::Failed,
        StepState::Skipped,
        StepState::Cancelled,
        StepState::Interrupted,
    ];

    /// The name the events and the API use.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
            StepState::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<StepState> {
        StepState::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// How the step ended; `None` while it runs or when it was interrupted.
    pub fn ended(self) -> Option<StepStatus> {
        match self {
            StepState::Succeeded => Some(StepStatus::Succeeded),
            StepState::Failed => Some(StepStatus::Failed),
            StepState::Skipped => Some(StepStatus::Skipped),
            StepState::Cancelled => Some(StepStatus::Cancelled),
            StepState::Running | StepState::Interrupted => None,
        }
    }

    /// Whether the step has ended (not running, not interrupted).
    pub fn is_settled(self) -> bool {
        self.ended().is_some()
    }
}

impl From<StepStatus> for StepState {
    fn from(status: StepStatus) -> StepState {
        match status {
            StepStatus::Succeeded => StepState::Succeeded,
            StepStatus::Failed => StepState::Failed,
            StepStatus::Skipped => StepState::Skipped,
            StepStatus::Cancelled => StepState::Cancelled,
        }
    }
}

display_as_str!(RunStatus, StepState);

/// A state compares equal to its name, as the events and the API spell it.
impl PartialEq<&str> for StepState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// Whether a run's failure was undone: what its `on_failure` steps did. Slack, the web page
/// and the environments all say this, and it is decided here alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Rollback {
    /// An `on_failure` step is still running.
    RollingBack,
    /// Every `on_failure` step that ran succeeded.
    RolledBack,
    /// An `on_failure` step that ran did not succeed (failed, cancelled, interrupted).
    Failed,
}

impl Rollback {
    /// What the `on_failure` steps among `steps` (each step's section and where it is) did;
    /// `None` when none ran. A skipped step did not run: its `if:` said no, so it undid
    /// nothing.
    pub fn of(steps: impl IntoIterator<Item = (Section, StepState)>) -> Option<Rollback> {
        let mut ran = steps
            .into_iter()
            .filter(|&(section, state)| {
                section == Section::OnFailure && state != StepState::Skipped
            })
            .map(|(_, state)| state)
            .peekable();
        ran.peek()?;
        let mut rollback = Rollback::RolledBack;
        for state in ran {
            match state {
                StepState::Running => return Some(Rollback::RollingBack),
                StepState::Succeeded => {}
                _ => rollback = Rollback::Failed,
            }
        }
        Some(rollback)
    }
}

/// The inputs that name what a run deploys, in the order they are looked for.
pub const RELEASE_INPUTS: [&str; 4] = ["release", "version", "ref", "tag"];

/// What a run deploys, by its inputs: the first of [`RELEASE_INPUTS`] it has, as text. The
/// environments view and the backtest both say it, and it is decided here alone.
pub fn release_of(inputs: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    RELEASE_INPUTS
        .iter()
        .find_map(|name| match inputs.get(*name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_on_failure_step_is_not_a_rollback() {
        // Slack once called a run whose only rollback step was skipped "rolled back".
        let skipped = [
            (Section::Steps, StepState::Failed),
            (Section::OnFailure, StepState::Skipped),
        ];
        assert_eq!(Rollback::of(skipped), None);
    }

    #[test]
    fn rollback_is_what_the_on_failure_steps_that_ran_did() {
        use Section::{Finally, OnFailure, Steps};
        use StepState::*;
        assert_eq!(Rollback::of([(Steps, Failed), (Finally, Succeeded)]), None);
        assert_eq!(
            Rollback::of([(OnFailure, Succeeded), (OnFailure, Skipped)]),
            Some(Rollback::RolledBack)
        );
        assert_eq!(
            Rollback::of([(OnFailure, Failed), (OnFailure, Running)]),
            Some(Rollback::RollingBack)
        );
        assert_eq!(
            Rollback::of([(OnFailure, Succeeded), (OnFailure, Cancelled)]),
            Some(Rollback::Failed)
        );
    }

    #[test]
    fn statuses_are_their_names_on_the_wire() {
        for status in RunStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).unwrap(),
                status.as_str(),
                "{status:?}"
            );
            assert_eq!(RunStatus::parse(status.as_str()), Some(status));
        }
        for state in StepState::ALL {
            assert_eq!(serde_json::to_value(state).unwrap(), state.as_str());
            assert_eq!(StepState::parse(state.as_str()), Some(state));
        }
    }
}
