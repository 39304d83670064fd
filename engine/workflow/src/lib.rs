//! Turns a workflow file into a checked plan. The YAML is first walked with an event parser that
//! records where every key sits and refuses alias bombs, then deserialised into raw serde types
//! (`deny_unknown_fields`), then checked into a [`Workflow`]: the step graph, expressions and
//! their references, grants, limits and plugin references. Every problem found is reported with
//! its file, line and column, and as many problems as practical are reported at once.
//!
//! This crate deliberately knows nothing about wasmtime or tokio, never runs a plugin, and reads
//! no file besides the workflow itself: plugin paths are resolved lexically, not checked on disk.

mod check;
mod config;
mod diff;
mod error;
mod expr;
mod grants;
mod inputs;
mod keys;
mod oci;
mod plan;
mod prepass;
mod raw;
mod units;

use std::path::{Path, PathBuf};

pub use config::{
    ConfigSchema, ConfigValue, GRANT_ANNOTATION, check_config, check_config_with, validate_config,
};
pub use diff::{GrantDiff, StepChange, StepDiff, grant_diff, grant_lines, plugin_text};
pub use error::{Diagnostic, Diagnostics, Error, Location, Result};
pub use expr::{
    EvalError, Expr, MAX_EXPR_DEPTH, MAX_EXPR_LENGTH, MAX_EXPR_MEMORY, Scope, Status, StepState,
    Template,
};
pub use grants::{Grant, HostPattern};
pub use oci::{OCI_SCHEME, OciRef};
pub use plan::{
    Allow, Approval, Concurrency, DEFAULT_APPROVAL_TIMEOUT, DEFAULT_LOG_BYTES, DEFAULT_MEMORY,
    DEFAULT_OUTPUT_BYTES, DEFAULT_RETRIES, DEFAULT_RETRY_FACTOR, DEFAULT_RETRY_INITIAL,
    DEFAULT_RETRY_MAX, DEFAULT_STACK, DEFAULT_TIMEOUT, Input, InputKind, KeyLocations, Limits,
    MAX_REQUIRED_APPROVALS, OutsideWindow, PluginRef, Resume, Retries, Step, StepKind, Workflow,
};
pub use prepass::MAX_EXPANDED_NODES;

/// The largest workflow file we read. Real workflows are a few kilobytes; a megabyte leaves
/// room for generous inline configuration while keeping parsing time and memory trivially bounded
/// even before the alias budget applies.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Reads the workflow at `path` and checks it. The size is checked before the file is read, so
/// an enormous file is refused without being loaded.
pub fn load(path: &Path) -> Result<Workflow> {
    let read_err = |source| Error::Read {
        file: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_err)?.len();
    if size > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            file: path.to_path_buf(),
            size,
            limit: MAX_FILE_BYTES,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_err)?;
    parse(&text, path)
}

/// Checks workflow `text`. `file` names the file in messages, and its directory is the base
/// against which relative plugin and grant paths are resolved.
pub fn parse(text: &str, file: &Path) -> Result<Workflow> {
    // `load` checks the size before reading; callers handing us text directly get the same cap.
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(Error::TooLarge {
            file: file.to_path_buf(),
            size: text.len() as u64,
            limit: MAX_FILE_BYTES,
        });
    }
    check::parse(text, file)
}

/// A JSON Schema of the workflow file format, for editors and for `xtask` to publish.
pub fn json_schema() -> serde_json::Value {
    let schema = schemars::schema_for!(raw::RawWorkflow);
    serde_json::to_value(schema).expect("a schema always serialises")
}

/// The directory relative paths in `file` are resolved against, made absolute.
fn base_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new(""));
    let dir = if parent.is_absolute() {
        parent.to_path_buf()
    } else {
        // Without a current directory there is nothing better to anchor to than the root.
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(parent)
    };
    grants::normalize(&dir)
}

/// The roles an approval step may name in `approvers.roles`: the daemon's roles (each includes
/// the ones before it). The workflow crate knows no principals; the daemon's `Role` is the same
/// list, which a test in the server crate checks.
pub const APPROVER_ROLES: [&str; 3] = ["viewer", "deployer", "admin"];

/// The closest of `candidates` to `word`, if it is close enough to be a plausible typo.
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// `; did you mean `x`?` when a close candidate exists, else nothing.
fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates)
        .map(|s| format!("; did you mean `{s}`?"))
        .unwrap_or_default()
}
