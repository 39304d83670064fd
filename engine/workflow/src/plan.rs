//! The checked plan. Every value here has been validated and every default applied, so the
//! runner never re-checks anything or carries an `Option` it must test.

use std::path::PathBuf;
use std::time::Duration;

use crate::expr::{Expr, Template};
use crate::grants::{Grant, HostPattern};
use crate::{ConfigValue, Location};

/// How long a step may run by default. Deploy steps (uploads, health checks, rollouts) commonly
/// take minutes; ten covers them while still catching a plugin stuck forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// A plugin's default linear memory. Generous for parsing reports and JSON, yet small enough that
/// several steps can run in parallel on a modest runner.
pub const DEFAULT_MEMORY: u64 = 256 * 1024 * 1024;
/// The default wasm stack. One MiB matches common native thread stacks, which plugin code built
/// from ordinary Rust or Go expects, while bounding runaway recursion quickly.
pub const DEFAULT_STACK: usize = 1024 * 1024;
/// How much log output a step keeps by default: enough to diagnose a failure, too little for a
/// chatty plugin to fill the run store.
pub const DEFAULT_LOG_BYTES: usize = 1024 * 1024;
/// How large a step's outputs may be by default. Outputs are meant for small values (URLs,
/// versions, counts) that later steps read; bulk data belongs in granted directories.
pub const DEFAULT_OUTPUT_BYTES: usize = 1024 * 1024;
/// Steps are not retried unless asked: a retried deploy is only safe if the author knows it is.
pub const DEFAULT_RETRIES: u32 = 0;
/// The first retry waits a second: long enough for a flapping dependency, short for a human.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_secs(1);
/// Each retry waits twice as long as the one before, the usual exponential backoff.
pub const DEFAULT_RETRY_FACTOR: f64 = 2.0;
/// No wait exceeds 30 seconds, so a run with retries still finishes in a human timescale.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);

/// How long an approval waits by default before it counts as rejected: long enough for a
/// person paged during working hours to look, short enough that a forgotten deploy does not
/// hold its concurrency key for a day.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The most approvals a step may require: a committee beyond this is a process, not a deploy
/// gate, and the bound keeps the vote lists small.
pub const MAX_REQUIRED_APPROVALS: u32 = 20;

/// A checked workflow.
#[derive(Clone, Debug)]
pub struct Workflow {
    pub name: String,
    pub description: Option<String>,
    /// The file as named to `load` or `parse`, for messages.
    pub file: PathBuf,
    /// The absolute directory relative paths were resolved against.
    pub base_dir: PathBuf,
    /// In file order.
    pub inputs: Vec<Input>,
    /// In file order; templates over `inputs` and `run.id` only.
    pub env: Vec<(String, Template)>,
    pub concurrency: Option<Concurrency>,
    pub resume: Resume,
    pub outside_window: OutsideWindow,
    pub steps: Vec<Step>,
    pub on_failure: Vec<Step>,
    pub finally: Vec<Step>,
    /// Not errors: where the file's expressions mean something else under GitHub Actions'
    /// rules than under shiphat's rules before them, for `validate` to show.
    pub warnings: Vec<crate::Diagnostic>,
}

impl Workflow {
    /// Every step: `steps`, then `on_failure`, then `finally`.
    pub fn all_steps(&self) -> impl Iterator<Item = &Step> {
        self.steps
            .iter()
            .chain(&self.on_failure)
            .chain(&self.finally)
    }

    /// The step with this id, in any section.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.all_steps().find(|s| s.id == id)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub name: String,
    pub description: Option<String>,
    pub kind: InputKind,
    /// Already checked against `kind`.
    pub default: Option<serde_json::Value>,
    pub required: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    String,
    Number,
    Bool,
    Choice(Vec<String>),
}

/// Runs sharing an evaluated `key` do not overlap: a later one waits when `queue` is true, and
/// is refused otherwise.
#[derive(Clone, Debug, PartialEq)]
pub struct Concurrency {
    pub key: Template,
    pub queue: bool,
}

/// What happens to runs interrupted by a daemon restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Resume {
    #[default]
    Manual,
    Auto,
}

/// What the daemon does with a run requested while a deploy window or freeze of its config
/// closes it (docs/daemon.md, "Deploy windows").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OutsideWindow {
    /// Refused (409), with when it opens.
    #[default]
    Refuse,
    /// Queued, and started when it opens.
    Wait,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub id: String,
    pub name: String,
    /// What the step does: run a plugin, or ask people.
    pub kind: StepKind,
    /// Always an `Object` (empty when `with:` is absent).
    pub with: ConfigValue,
    pub allow: Allow,
    /// Indices into the same section, in the order written.
    pub needs: Vec<usize>,
    pub condition: Option<Expr>,
    pub limits: Limits,
    pub retries: Retries,
    pub continue_on_error: bool,
    pub idempotent: bool,
    /// Where the step starts in the file.
    pub location: Location,
    /// Where each key under the step sits (`with.keep`, `allow.read[0]`), so later checks such
    /// as [`crate::check_config`] can point at the right line.
    pub key_locations: KeyLocations,
}

/// Positions of the keys under one step, by path relative to the step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyLocations(pub Vec<(String, Location)>);

impl KeyLocations {
    /// The position of `path`, or of its nearest recorded ancestor.
    pub fn find(&self, path: &str) -> Option<Location> {
        let mut path = path;
        loop {
            if let Some((_, l)) = self.0.iter().find(|(p, _)| p == path) {
                return Some(*l);
            }
            if path.is_empty() {
                return None;
            }
            path = crate::prepass::parent(path);
        }
    }
}

/// What a step does.
#[derive(Clone, Debug, PartialEq)]
pub enum StepKind {
    /// Runs a plugin.
    Plugin(PluginRef),
    /// Waits for people to approve (the step succeeds) or reject (it fails); its `limits.timeout`
    /// is how long it waits, after which it counts as rejected. It has no `with`, grants or
    /// retries.
    Approval(Approval),
}

impl StepKind {
    /// The plugin the step runs, unless it is an approval.
    pub fn plugin(&self) -> Option<&PluginRef> {
        match self {
            StepKind::Plugin(plugin) => Some(plugin),
            StepKind::Approval(_) => None,
        }
    }
}

/// Who must decide, and how, before an approval step lets the run go on.
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    /// What the approvers read.
    pub message: Template,
    /// Principals holding any of these roles may decide.
    pub roles: Vec<String>,
    /// These principals may decide. With `roles` also empty, anyone who may start the
    /// workflow may.
    pub principals: Vec<String>,
    /// Approvals needed, at least 1; a single rejection rejects.
    pub required: u32,
    /// Whether the person who started the run may approve it.
    pub allow_self: bool,
}

/// Which plugin a step runs, optionally pinned to a digest of its component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginRef {
    Name {
        name: String,
        sha256: Option<[u8; 32]>,
    },
    Path {
        path: PathBuf,
        sha256: Option<[u8; 32]>,
    },
    /// `oci://REGISTRY/REPOSITORY:TAG@sha256:DIGEST`: pinned by the digest of its manifest, or
    /// by the lock file beside the workflow.
    Oci(crate::OciRef),
}

/// What a step's plugin may reach. Anything not listed is denied.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Allow {
    pub read: Vec<Grant>,
    pub write: Vec<Grant>,
    pub http: Vec<HostPattern>,
    /// Variables the plugin sees, with templated values.
    pub env: Vec<(String, Template)>,
    /// Names of secrets the plugin may ask for.
    pub secrets: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub timeout: Duration,
    pub memory: u64,
    pub stack: usize,
    pub log_bytes: usize,
    pub output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout: DEFAULT_TIMEOUT,
            memory: DEFAULT_MEMORY,
            stack: DEFAULT_STACK,
            log_bytes: DEFAULT_LOG_BYTES,
            output_bytes: DEFAULT_OUTPUT_BYTES,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Retries {
    /// Retries after the first attempt; 0 runs the step once.
    pub count: u32,
    pub initial: Duration,
    pub factor: f64,
    pub max: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            count: DEFAULT_RETRIES,
            initial: DEFAULT_RETRY_INITIAL,
            factor: DEFAULT_RETRY_FACTOR,
            max: DEFAULT_RETRY_MAX,
        }
    }
}

impl Retries {
    /// How long to wait before retry number `attempt`, counted from 1 (the first retry waits
    /// `initial`), never more than `max`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(i32::MAX as u32) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exp);
        if !secs.is_finite() || secs >= self.max.as_secs_f64() {
            self.max
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_cap() {
        let r = Retries {
            count: 10,
            ..Retries::default()
        };
        assert_eq!(r.delay(1), Duration::from_secs(1));
        assert_eq!(r.delay(2), Duration::from_secs(2));
        assert_eq!(r.delay(5), Duration::from_secs(16));
        assert_eq!(r.delay(6), Duration::from_secs(30));
        assert_eq!(r.delay(u32::MAX), Duration::from_secs(30));
    }
}
