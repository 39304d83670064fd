//! The per-attempt state of a plugin: a WASI context built from the step's grants and
//! nothing else, the HTTP allow-list, the memory limiter, log capture and the `host`
//! interface of the contract.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime_wasi::filesystem::Descriptor;
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::beneath;
use crate::bindings::{self, HostImports};
use crate::capture::{Capture, CaptureStream, LogLine, LogSink, LogSource};
use crate::http::{AllowList, MAX_REFUSALS_LOGGED};
use crate::redact::Redactor;
use crate::{Grants, Level, Limits, fmt_bytes};

/// What one table element costs the host: wasmtime keeps each as one pointer. Tables are
/// charged to the step's `memory` limit at this rate, so many tables cannot add up to more.
const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();

/// How many core instances, linear memories and tables a store may create.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Caps {
    pub(crate) instances: usize,
    pub(crate) memories: usize,
    pub(crate) tables: usize,
}

impl Caps {
    /// A step's caps. A Rust plugin has about five core instances (its module, the WASI
    /// adapter and the shims `wit-component` adds), one memory and a few tables; componentize-py
    /// links a dozen libraries. Each memory reserves gigabytes of address space with its guard
    /// pages whatever its size, and each instance and table costs the host bookkeeping, so the
    /// caps sit far above any real plugin and far below wasmtime's default of 10,000 (one
    /// component may declare 1,000 core instances and a module 100 memories and 100 tables;
    /// nested components and instances multiply them).
    pub(crate) const STEP: Caps = Caps {
        instances: 500,
        memories: 64,
        tables: 64,
    };

    /// `describe()` runs once per plugin, when a workflow is prepared, and a plugin over the
    /// step's caps must still be described for its step to fail with the fault that names
    /// them; it keeps wasmtime's defaults, the engine's bound before step caps existed.
    pub(crate) const DESCRIBE: Caps = Caps {
        instances: 10_000,
        memories: 10_000,
        tables: 10_000,
    };
}

/// Bounds what a step takes from the host: the bytes of all its memories and tables and what
/// its instances cost outside them, together (the step's `memory` limit), and how many
/// instances, memories and tables it creates. Records that the limit was hit, so the trap
/// that follows (Rust aborts when an allocation fails) is reported as the limit it is.
pub(crate) struct Limiter {
    /// The step's `memory` limit, for all of the step's memories, tables and instances.
    budget: usize,
    /// How many instances, memories and tables the store may create.
    pub(crate) caps: Caps,
    /// What they take now, in bytes.
    used: usize,
    pub(crate) hit: bool,
}

impl Limiter {
    /// A limiter for a step with `budget` bytes, `charged` of them taken before the plugin
    /// starts (what its instances cost outside memories and tables).
    pub(crate) fn new(budget: usize, charged: usize, caps: Caps) -> Self {
        Limiter {
            budget,
            caps,
            used: charged,
            hit: false,
        }
    }

    /// Charges growth from `current` to `desired` bytes against the step's budget. Growth
    /// past the object's own maximum is refused without charge: wasmtime would fail it anyway
    /// and the charge would never be returned.
    fn grow(&mut self, current: usize, desired: usize, max: Option<usize>) -> bool {
        if max.is_some_and(|max| desired > max) {
            return false;
        }
        let used = self
            .used
            .saturating_sub(current)
            .saturating_add(desired.max(current));
        if used > self.budget {
            self.hit = true;
            return false;
        }
        self.used = used;
        true
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, max))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
            max.map(|max| max.saturating_mul(TABLE_ELEMENT_BYTES)),
        ))
    }

    fn instances(&self) -> usize {
        self.caps.instances
    }

    fn memories(&self) -> usize {
        self.caps.memories
    }

    fn tables(&self) -> usize {
        self.caps.tables
    }
}

/// The most entries a step's resource table may hold at once. Every host object a plugin
/// holds is one entry: an open file or directory, a stream, a pollable, an HTTP request, a
/// set of headers. Every open descriptor is among them, so this also bounds the step's file
/// descriptors, far below the process's limit. Real plugins hold a few dozen; a plugin that
/// opens files without end must not exhaust the engine's descriptors and stop the daemon
/// from accepting connections.
pub(crate) const MAX_RESOURCES: usize = 1024;

/// The most bytes one set of HTTP headers may take in host memory (wasi-http's default is
/// 128 KiB). Servers refuse headers past 8 to 16 KiB; with [`MAX_RESOURCES`] sets at most,
/// headers cannot hold more than 64 MiB of host memory outside the step's `memory` limit.
const MAX_HTTP_FIELDS_BYTES: usize = 64 * 1024;

/// The most random bytes one `get-random-bytes` call may ask for (WASI's default is 64 MiB,
/// allocated on the host). Seeds and keys are a few dozen bytes.
const MAX_RANDOM_BYTES: u64 = 1024 * 1024;

/// How much of a name the plugin asked for is shown in an engine log line. Real secret names
/// are a few dozen characters; a plugin must not write megabytes of log through a name.
const MAX_SHOWN_NAME: usize = 128;

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
    /// Secrets asked for and refused so far; only the first are logged.
    refused_secrets: usize,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
}

impl StepState {
    /// Builds the sandbox for one attempt. Fails when a grant cannot be opened.
    pub(crate) fn new(
        grants: &Grants,
        limits: &Limits,
        instances_cost: u64,
        caps: Caps,
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
        // A file call is blocking for the plugin anyway; done on the thread the attempt runs
        // on, it skips a hop to tokio's blocking pool and back per call, which is most of what
        // a deploy of many small files spent. The attempt of a step with a file grant runs on
        // a thread of its own (`on_own_thread` in lib.rs), never on a runtime worker, so a
        // call that blocks for good stalls only its step, whose wall-clock guard still fires;
        // a step without one has no file to block on, and runs in place (`in_place`).
        wasi.allow_blocking_current_thread(true);
        wasi.stdout(CaptureStream(stdout.clone()))
            .stderr(CaptureStream(stderr.clone()))
            .max_random_size(MAX_RANDOM_BYTES);
        for (name, value) in &grants.env {
            wasi.env(name, value);
        }
        // A write grant names a place to put things: creating it is what the user expects of
        // a first deploy to a new target. A grant written as `../x` is seen under that name too
        // (`Grant::guest_paths`).
        let granted = [
            (&grants.read, false, FsPerms::ReadOnly, "allow.read"),
            (&grants.write, true, FsPerms::ReadWrite, "allow.write"),
        ];
        for (list, create, perms, key) in granted {
            for grant in list {
                let dir = beneath::open(grant, create)
                    .map_err(|e| format!("cannot open the directory {key} grants: {e}"))?;
                for guest in grant.guest_paths() {
                    wasi.preopened_dir(&dir.path, guest, perms).map_err(|e| {
                        format!(
                            "cannot open `{}` granted by {key}: {e}",
                            grant.host_path.display()
                        )
                    })?;
                }
            }
        }
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(MAX_HTTP_FIELDS_BYTES);
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        Ok(StepState {
            wasi: wasi.build(),
            http,
            table,
            allow_list: AllowList {
                patterns: grants.http.clone(),
                logs: sink.clone(),
                redactor: redactor.clone(),
                refused: 0,
            },
            limiter: Limiter::new(
                usize::try_from(limits.memory).unwrap_or(usize::MAX),
                usize::try_from(instances_cost).unwrap_or(usize::MAX),
                caps,
            ),
            deadline: Instant::now() + limits.timeout,
            redactor,
            secrets: grants.secrets.clone(),
            sink,
            plugin_log: PluginLog {
                budget: limits.log_bytes,
                used: 0,
                truncated: false,
            },
            refused_secrets: 0,
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

    /// Emits partial lines and truncation counts once the call is over; `cut` says it did not
    /// return (see [`Capture::finish`]).
    pub(crate) fn finish_logs(&mut self, cut: bool) {
        self.stdout.finish(cut);
        self.stderr.finish(cut);
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
            // The name comes from the plugin: log no more of it than a real name could be.
            let shown = match name.char_indices().nth(MAX_SHOWN_NAME) {
                Some((end, _)) => format!("{}…", &name[..end]),
                None => name,
            };
            self.refused_secrets += 1;
            let message = match self.refused_secrets {
                n if n < MAX_REFUSALS_LOGGED => {
                    format!("secret `{shown}` refused: the step's allow.secrets does not grant it")
                }
                MAX_REFUSALS_LOGGED => format!(
                    "secret `{shown}` refused; {MAX_REFUSALS_LOGGED} secrets were refused, further refusals are not logged"
                ),
                _ => return None,
            };
            self.engine_line(Level::Warn, message);
        }
        found
    }

    /// `flock(LOCK_EX | LOCK_NB)` on the plugin's open file. The lock belongs to the open
    /// file, which lives in the step's resource table: dropping the descriptor, or the store
    /// when the step ends however it ends, closes it and so releases the lock, and the kernel
    /// releases it when the process dies. It never blocks.
    async fn try_lock(&mut self, file: Resource<Descriptor>) -> Result<bool, String> {
        let file = match self.table.get(&file) {
            // A lock excludes writers, so only a step that may write the file may take it:
            // a step granted only `read` on a deploy target must not be able to hold off
            // every deploy of it for as long as its own timeout allows.
            Ok(Descriptor::File(file)) if !file.open_mode.contains(OpenMode::WRITE) => {
                return Err(
                    "the file is open for reading only; open it for writing (which needs an `allow.write` grant) to lock it"
                        .into(),
                );
            }
            Ok(Descriptor::File(file)) => Arc::clone(&file.file),
            Ok(Descriptor::Dir(_)) => {
                return Err("a directory cannot be locked; lock a file in it".into());
            }
            Err(e) => return Err(format!("not an open file: {e}")),
        };
        match file.try_lock() {
            Ok(()) => Ok(true),
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock: {e}")),
        }
    }

    async fn sync_filesystem(&mut self, dir: Resource<Descriptor>) -> Result<bool, String> {
        // Only a step that may write there may make the disk flush. A directory's open mode
        // says nothing (wasmtime-wasi opens directories for reading); its grant's does.
        let file = match self.table.get(&dir) {
            Ok(Descriptor::Dir(dir)) if !dir.perms.write_not_permitted() => Arc::clone(&dir.dir),
            Ok(Descriptor::File(file)) if file.open_mode.contains(OpenMode::WRITE) => {
                Arc::clone(&file.file)
            }
            Ok(_) => {
                return Err(
                    "the descriptor is open for reading only; sync through one opened for writing (which needs an `allow.write` grant)"
                        .into(),
                );
            }
            Err(e) => return Err(format!("not an open descriptor: {e}")),
        };
        // This blocks the attempt's own thread (see `on_own_thread`), never a runtime
        // worker, and the step's timeout still ends a step stuck in it.
        sync_filesystem_of(&file)
    }
}

/// `syncfs(2)` on the filesystem that holds `file`: everything written there, data and
/// directory entries, reaches the disk. Since Linux 5.8 it also reports write-back errors
/// that happened since `file` was opened.
#[cfg(target_os = "linux")]
fn sync_filesystem_of(file: &std::fs::File) -> Result<bool, String> {
    use rustix::fs::{Mode, OFlags};
    let failed = |e: rustix::io::Errno| format!("syncing the filesystem failed: {e}");
    // `syncfs` refuses (EBADF) the descriptor wasmtime-wasi holds for a grant's root, which
    // cap-std opens as a path-only handle; the same directory opened for reading is accepted.
    let dir = rustix::fs::openat(
        file,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    );
    match dir {
        Ok(dir) => rustix::fs::syncfs(&dir),
        // Not a directory: a file, which `syncfs` takes as it is.
        Err(rustix::io::Errno::NOTDIR) => rustix::fs::syncfs(file),
        Err(e) => Err(e),
    }
    .map(|()| true)
    .map_err(failed)
}

/// Elsewhere there is no call that syncs one filesystem; the plugin syncs file by file.
#[cfg(not(target_os = "linux"))]
fn sync_filesystem_of(_: &std::fs::File) -> Result<bool, String> {
    Ok(false)
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
