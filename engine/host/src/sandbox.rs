//! The per-attempt state of a plugin: a WASI context built from the step's grants and
//! nothing else, the HTTP allow-list, the memory limiter, log capture and the `host`
//! interface of the contract.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::bindings::{self, HostImports};
use crate::capture::{Capture, CaptureStream, LogLine, LogSink, LogSource};
use crate::http::AllowList;
use crate::redact::Redactor;
use crate::{Grants, Level, Limits, fmt_bytes};

/// Tables hold function references; real plugins use a few thousand entries at most. The
/// cap only stops a plugin from growing one without end.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Records whether the plugin hit its memory limit, so the trap that follows (Rust aborts
/// when an allocation fails) can be reported as the limit it is.
pub(crate) struct Limiter {
    memory: usize,
    pub(crate) hit: bool,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// `host.log` lines, within the step's log budget.
struct PluginLog {
    budget: usize,
    used: usize,
    truncated: bool,
}

pub(crate) struct StepState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    allow_list: AllowList,
    pub(crate) limiter: Limiter,
    pub(crate) deadline: Instant,
    pub(crate) redactor: Redactor,
    secrets: Vec<(String, String)>,
    sink: LogSink,
    plugin_log: PluginLog,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
}

impl StepState {
    /// Builds the sandbox for one attempt. Fails when a grant cannot be opened.
    pub(crate) fn new(
        grants: &Grants,
        limits: &Limits,
        redactor: Redactor,
        sink: LogSink,
    ) -> Result<Self, String> {
        let stdout = Capture::new(
            LogSource::Stdout,
            limits.log_bytes,
            sink.clone(),
            redactor.clone(),
        );
        let stderr = Capture::new(
            LogSource::Stderr,
            limits.log_bytes,
            sink.clone(),
            redactor.clone(),
        );
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(CaptureStream(stdout.clone()))
            .stderr(CaptureStream(stderr.clone()));
        for (name, value) in &grants.env {
            wasi.env(name, value);
        }
        for (host_path, guest_path) in &grants.read {
            wasi.preopened_dir(host_path, guest_path, FsPerms::ReadOnly)
                .map_err(|e| {
                    format!(
                        "cannot open `{}` granted by allow.read: {e}",
                        host_path.display()
                    )
                })?;
        }
        for (host_path, guest_path) in &grants.write {
            // A write grant names a place to put things; creating it is what the user expects
            // of a first deploy to a new target.
            std::fs::create_dir_all(host_path).map_err(|e| {
                format!(
                    "cannot create `{}` granted by allow.write: {e}",
                    host_path.display()
                )
            })?;
            wasi.preopened_dir(host_path, guest_path, FsPerms::ReadWrite)
                .map_err(|e| {
                    format!(
                        "cannot open `{}` granted by allow.write: {e}",
                        host_path.display()
                    )
                })?;
        }
        Ok(StepState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            allow_list: AllowList {
                patterns: grants.http.clone(),
                logs: sink.clone(),
                redactor: redactor.clone(),
            },
            limiter: Limiter {
                memory: usize::try_from(limits.memory).unwrap_or(usize::MAX),
                hit: false,
            },
            deadline: Instant::now() + limits.timeout,
            redactor,
            secrets: grants.secrets.clone(),
            sink,
            plugin_log: PluginLog {
                budget: limits.log_bytes,
                used: 0,
                truncated: false,
            },
            stdout,
            stderr,
        })
    }

    fn engine_line(&self, level: Level, message: String) {
        (self.sink)(LogLine {
            level,
            source: LogSource::Engine,
            message: self.redactor.redact(&message),
        });
    }

    /// Emits partial lines and truncation counts once the call is over.
    pub(crate) fn finish_logs(&mut self) {
        self.stdout.finish();
        self.stderr.finish();
    }

    /// The message of a Rust panic, when the plugin printed one to stderr before trapping.
    pub(crate) fn panic_message(&self) -> Option<String> {
        parse_panic(&self.stderr.tail())
    }
}

/// Finds the message in Rust's panic output: `thread '…' panicked at FILE:LINE:COL:\nMESSAGE`.
/// A Python plugin (componentize-py) prints the exception's traceback, then its runtime
/// panics with a generic message; the exception (`RuntimeError: kaboom`) is what the user
/// needs, so it wins.
fn parse_panic(stderr: &str) -> Option<String> {
    let panic_at = stderr.rfind("panicked at ")?;
    if let Some(exception) = python_exception(&stderr[..panic_at]) {
        return Some(exception);
    }
    let start = panic_at + "panicked at ".len();
    let rest = &stderr[start..];
    let (location, message) = rest.split_once(":\n")?;
    let message: Vec<&str> = message
        .lines()
        .take_while(|line| !line.starts_with("note: "))
        .collect();
    let message = message.join("\n");
    let message = message.trim();
    Some(if message.is_empty() {
        format!("at {location}")
    } else {
        format!("{message} (at {location})")
    })
}

/// The last exception of a Python traceback: the first unindented line after the last
/// `Traceback (most recent call last):`, such as `RuntimeError: kaboom`.
fn python_exception(stderr: &str) -> Option<String> {
    let start = stderr.rfind("Traceback (most recent call last):")?;
    let exception: Vec<&str> = stderr[start..]
        .lines()
        .skip(1)
        .skip_while(|line| line.starts_with(' '))
        .take_while(|line| !line.is_empty() && !line.starts_with("thread '"))
        .collect();
    let exception = exception.join("\n");
    (!exception.trim().is_empty()).then(|| exception.trim().to_owned())
}

impl WasiView for StepState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for StepState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.allow_list,
        }
    }
}

impl HostImports for StepState {
    async fn log(&mut self, level: bindings::Level, message: String) {
        let log = &mut self.plugin_log;
        if log.used + message.len() > log.budget {
            if !log.truncated {
                log.truncated = true;
                let marker = format!(
                    "[plugin log truncated: the step's log_limit of {} is reached; further lines are dropped]",
                    fmt_bytes(log.budget as u64)
                );
                self.engine_line(Level::Warn, marker);
            }
            return;
        }
        log.used += message.len();
        let level = match level {
            bindings::Level::Trace => Level::Trace,
            bindings::Level::Debug => Level::Debug,
            bindings::Level::Info => Level::Info,
            bindings::Level::Warn => Level::Warn,
            bindings::Level::Error => Level::Error,
        };
        (self.sink)(LogLine {
            level,
            source: LogSource::Plugin,
            message: self.redactor.redact(&message),
        });
    }

    async fn secret(&mut self, name: String) -> Option<String> {
        let found = self
            .secrets
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone());
        if found.is_none() {
            self.engine_line(
                Level::Warn,
                format!("secret `{name}` refused: the step's allow.secrets does not grant it"),
            );
        }
        found
    }
}

/// The linker every plugin is instantiated with: WASI (with nothing granted unless the
/// context grants it), wasi-http behind the allow-list, and the contract's `host` interface.
pub(crate) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<StepState>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
    bindings::shiphat::plugin::host::add_to_linker::<StepState, HasSelf<StepState>>(
        &mut linker,
        |state| state,
    )?;
    Ok(linker)
}

#[cfg(test)]
mod tests {
    use super::parse_panic;

    #[test]
    fn panic_messages_are_found_in_rust_panic_output() {
        let stderr = "some log\n\nthread '<unnamed>' panicked at src/lib.rs:12:9:\nmisbehave: deliberate panic\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            parse_panic(stderr).as_deref(),
            Some("misbehave: deliberate panic (at src/lib.rs:12:9)")
        );
        assert_eq!(parse_panic("no panic here"), None);
    }

    /// Regression: a Python plugin's `RuntimeError: kaboom` was reported as "Python function
    /// threw an unexpected exception (at runtime/src/lib.rs:1293:29)".
    #[test]
    fn a_python_exception_is_the_message() {
        let stderr = "Traceback (most recent call last):\n  File \"/app.py\", line 9, in run\n    raise RuntimeError(\"kaboom\")\nRuntimeError: kaboom\n\nthread '<unnamed>' panicked at runtime/src/lib.rs:1293:29:\nPython function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(parse_panic(stderr).as_deref(), Some("RuntimeError: kaboom"));
    }
}
