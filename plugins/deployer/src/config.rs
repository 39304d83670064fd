//! The `with:` block: parsed as written, then checked into one type per strategy, so the
//! strategies never test for keys they need.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use shiphat_plugin_sdk::{self as sdk, StepError};

/// How long a release name may be. Far more than any version string; short enough that
/// `releases/.<name>.partial-<run id>` stays well within every file system's name limit.
const MAX_RELEASE_NAME: usize = 128;

/// How many releases `keep` defaults to, as in Capistrano.
const DEFAULT_KEEP: u32 = 5;

/// How long to wait between status polls by default: quick enough to notice a finished
/// deploy soon, slow enough not to load the deploy API.
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long to poll a deploy's status by default: longer than most deploys take, short enough
/// that a stuck one does not hold the workflow for an hour.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// How long a symlink step waits for another deploy's lock on its target by default: not at
/// all, so two deploys started by mistake fail loudly instead of running one after the other.
const DEFAULT_WAIT_FOR_LOCK: Duration = Duration::ZERO;

/// The `with:` block as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub strategy: Strategy,
    #[serde(default)]
    action: Action,
    release: Option<Value>,
    source: Option<String>,
    target: Option<String>,
    keep: Option<u32>,
    wait_for_lock: Option<String>,
    durable: Option<bool>,
    url: Option<String>,
    secret: Option<String>,
    environment: Option<String>,
    poll_interval: Option<String>,
    timeout: Option<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    Symlink,
    Webhook,
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Deploy,
    Rollback,
}

/// A checked `strategy: symlink` block.
pub struct Symlink {
    pub target: String,
    /// How long to wait for another deploy's lock on `target` before failing.
    pub wait_for_lock: Duration,
    /// Whether to `fsync` what is written before and after each switch of `current`.
    pub durable: bool,
    pub action: SymlinkAction,
}

/// What a symlink step does to its target.
pub enum SymlinkAction {
    Deploy {
        release: String,
        source: String,
        keep: u32,
    },
    Rollback {
        /// The release to go back to; `None` for the one before the current one.
        release: Option<String>,
    },
}

/// A checked `strategy: webhook` block.
pub struct Webhook {
    pub action: Action,
    pub release: String,
    pub url: String,
    pub secret: String,
    pub environment: Option<String>,
    pub poll_interval: Duration,
    pub timeout: Duration,
}

impl Config {
    pub fn symlink(self) -> Result<Symlink, StepError> {
        self.only_for(
            "webhook",
            &[
                ("url", self.url.is_some()),
                ("secret", self.secret.is_some()),
                ("environment", self.environment.is_some()),
                ("poll_interval", self.poll_interval.is_some()),
                ("timeout", self.timeout.is_some()),
            ],
        )?;
        if self.action == Action::Rollback {
            self.only_for(
                "symlink deploy",
                &[
                    ("source", self.source.is_some()),
                    ("keep", self.keep.is_some()),
                ],
            )?;
        }
        let target = required(self.target, "target", "symlink")?;
        let release = self.release.as_ref().map(release_name).transpose()?;
        let action = match self.action {
            Action::Deploy => SymlinkAction::Deploy {
                release: release.ok_or_else(|| missing("release", "symlink deploy"))?,
                source: required(self.source, "source", "symlink deploy")?,
                keep: self.keep.unwrap_or(DEFAULT_KEEP).max(1),
            },
            Action::Rollback => SymlinkAction::Rollback { release },
        };
        Ok(Symlink {
            target,
            wait_for_lock: duration(self.wait_for_lock, "wait_for_lock", DEFAULT_WAIT_FOR_LOCK)?,
            durable: self.durable.unwrap_or(true),
            action,
        })
    }

    pub fn webhook(self) -> Result<Webhook, StepError> {
        self.only_for(
            "symlink",
            &[
                ("source", self.source.is_some()),
                ("target", self.target.is_some()),
                ("keep", self.keep.is_some()),
                ("wait_for_lock", self.wait_for_lock.is_some()),
                ("durable", self.durable.is_some()),
            ],
        )?;
        let release = match &self.release {
            Some(value) => release_name(value)?,
            None => return Err(missing("release", "webhook")),
        };
        Ok(Webhook {
            action: self.action,
            release,
            url: required(self.url, "url", "webhook")?,
            secret: required(self.secret, "secret", "webhook")?,
            environment: self.environment,
            poll_interval: duration(self.poll_interval, "poll_interval", DEFAULT_POLL_INTERVAL)?,
            timeout: duration(self.timeout, "timeout", DEFAULT_TIMEOUT)?,
        })
    }

    /// Refuses keys that mean nothing here, so a typo'd strategy does not silently ignore them.
    fn only_for(&self, owner: &str, keys: &[(&str, bool)]) -> Result<(), StepError> {
        match keys.iter().find(|(_, given)| *given) {
            Some((key, _)) => Err(sdk::invalid_config(format!(
                "`{key}` applies only to {owner}; remove it"
            ))),
            None => Ok(()),
        }
    }
}

fn required(value: Option<String>, key: &str, what: &str) -> Result<String, StepError> {
    value.ok_or_else(|| missing(key, what))
}

fn missing(key: &str, what: &str) -> StepError {
    sdk::invalid_config(format!("`{key}` is required for {what}"))
}

fn duration(value: Option<String>, key: &str, default: Duration) -> Result<Duration, StepError> {
    let Some(text) = value else {
        return Ok(default);
    };
    humantime::parse_duration(&text).map_err(|e| {
        sdk::invalid_config(format!(
            "`{key}`: `{text}` is not a duration ({e}); write e.g. `2s`, `500ms` or `10m`"
        ))
    })
}

/// A release name: one safe path component, because it becomes `releases/<name>`.
fn release_name(value: &Value) -> Result<String, StepError> {
    let name = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) if n.is_u64() => n.to_string(),
        other => {
            return Err(sdk::invalid_config(format!(
                "`release` must be a string or a whole number, not `{other}`"
            )));
        }
    };
    check_release_name(&name)?;
    Ok(name)
}

/// Checks that `name` is a release name; also used for names read back from `current`.
pub fn check_release_name(name: &str) -> Result<(), StepError> {
    let invalid = |why: &str| {
        Err(sdk::invalid_config(format!(
            "`release`: `{name}` is not a valid release name: {why}"
        )))
    };
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > MAX_RELEASE_NAME {
        return invalid(&format!("it is longer than {MAX_RELEASE_NAME} characters"));
    }
    if name.starts_with('.') {
        return invalid("it starts with `.` (names starting with `.` are the deployer's own)");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
    {
        return invalid(&format!(
            "it contains `{}`; use letters, digits, `.`, `_`, `+` and `-`",
            c.escape_default()
        ));
    }
    Ok(())
}
