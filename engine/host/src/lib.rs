//! Runs shiphat plugins: WebAssembly components that implement the `step` world of
//! `wit/shiphat.wit`.
//!
//! This crate owns wasmtime. It configures the engine, compiles components (through an
//! on-disk cache), turns a step's grants into a WASI context, enforces the step's limits
//! (time, memory, stack, log and output size) and classifies how a call ended: a value the
//! plugin returned, or a fault of the plugin (a trap, a limit hit). It is the only crate
//! that names WIT types; everything it hands out is plain Rust.
//!
//! It deliberately knows nothing about workflows beyond the plain data it is given (grants
//! and limits): ordering, retries and expressions belong to the runner.

mod beneath;
mod bindings;
mod cache;
mod capture;
mod http;
mod objects;
mod pool;
mod redact;
mod sandbox;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};

use crate::bindings::StepPre;
pub use crate::capture::{LogLine, LogSink, LogSource};
pub use crate::redact::Redactor;
use crate::sandbox::StepState;
pub use shiphat_workflow::{Grant, HostPattern, Limits};

/// A plugin log level, as in the WIT `host.level` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// How often the epoch ticker advances every engine's epoch. A step's time limit is checked
/// on each tick, so this is the granularity of timeouts for code that never calls the host;
/// it also bounds how long a busy plugin holds a tokio worker before yielding to others.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Host code called from wasm (WASI, HTTP, our `host` interface) runs on the async fiber's
/// stack too, below the wasm frames. Give it this much room beyond the wasm stack limit.
const HOST_STACK_HEADROOM: usize = 1 << 20;

/// Extra time allowed, past a step's timeout, for the wall-clock guard around the whole
/// call. The epoch deadline normally fires first; this only catches a call stuck in the host.
const WALL_CLOCK_GRACE: Duration = Duration::from_millis(500);

/// Errors loading or inspecting a plugin. What happens while a step runs is an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read plugin `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "plugin `{}` does not match its pinned digest: expected sha256:{expected}, found sha256:{actual}",
        path.display()
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("plugin `{}` is not a valid component: {message}", path.display())]
    Compile { path: PathBuf, message: String },
    #[error("plugin `{}` does not implement the shiphat `step` world: {message}", path.display())]
    Link { path: PathBuf, message: String },
    #[error("plugin `{}` failed in describe(): {message}", path.display())]
    Describe { path: PathBuf, message: String },
    #[error("cannot set up the wasm engine: {0}")]
    Engine(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Settings for a [`Host`].
#[derive(Clone, Debug, Default)]
pub struct HostConfig {
    /// Where compiled components are kept between runs; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
    /// Told before a component is compiled (not found in the cache), with its path and size:
    /// a first compile can take many seconds, and a front end should say why it waits.
    pub on_compile: Option<CompileHook>,
    /// Whether steps take their instances from a pool (`pool.rs`) when they can: for a
    /// process that runs many steps, the daemon. Making the pool and loading each plugin into
    /// it too cost a millisecond or two up front, which a one-shot run of a few steps would
    /// not win back at about 50 µs a step.
    pub instance_pool: bool,
}

/// See [`HostConfig::on_compile`]: called with the component's path and size in bytes.
#[derive(Clone)]
pub struct CompileHook(pub Arc<CompileFn>);

/// What a [`CompileHook`] calls.
pub type CompileFn = dyn Fn(&Path, usize) + Send + Sync;

impl std::fmt::Debug for CompileHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompileHook")
    }
}

/// What `describe()` said. Serialised only into the compile cache (`cache.rs`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub config_schema: String,
}

/// A compiled plugin, ready to instantiate. Cheap to share: a [`Host`] hands out one per file
/// content and wasm stack size.
pub struct Plugin {
    path: PathBuf,
    sha256: [u8; 32],
    component: Component,
    pre: StepPre<StepState>,
    /// The same, loaded into the engine's pool twin, when it has one and the component fits
    /// a pool slot.
    pooled: Option<StepPre<StepState>>,
    stack: usize,
    /// What its core instances cost the host outside memories and tables, charged to every
    /// step's `memory` limit (see `objects.rs`).
    instances_cost: u64,
    /// What `describe()` said; it must not depend on anything, so it is asked once.
    info: tokio::sync::OnceCell<PluginInfo>,
    /// How this plugin was obtained, for diagnostics and benchmarks.
    pub load: LoadKind,
}

/// Where a [`Plugin`]'s machine code came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadKind {
    /// Compiled now, and written to the cache when there is one.
    Compiled,
    /// Read back from the on-disk cache.
    Cached,
}

impl Plugin {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The sha256 of the component file, hex.
    pub fn digest(&self) -> String {
        hex::encode(self.sha256)
    }

    /// The component's imports and exports as WIT-ish names, for `shiphat plugin inspect`.
    pub fn interface(&self, host: &Host) -> (Vec<String>, Vec<String>) {
        let engine = &host.engine_for(self.stack).engine;
        let ty = self.component.component_type();
        let imports = ty
            .imports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        let exports = ty
            .exports(engine)
            .map(|(name, _)| name.to_string())
            .collect();
        (imports, exports)
    }
}

/// Who is calling and why: passed to the plugin as `step-context`.
#[derive(Clone, Debug)]
pub struct Context {
    pub run_id: String,
    pub workflow: String,
    pub step_id: String,
    pub attempt: u32,
    pub dry_run: bool,
}

/// What a step may reach, resolved to concrete values.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Directories opened read-only, each beneath its root.
    pub read: Vec<Grant>,
    /// Directories opened read-write, created (beneath their root) when missing.
    pub write: Vec<Grant>,
    /// Hosts the plugin may send HTTP requests to.
    pub http: Vec<HostPattern>,
    /// Environment variables, with their values.
    pub env: Vec<(String, String)>,
    /// Secrets by name, with their values.
    pub secrets: Vec<(String, String)>,
}

/// One call of a plugin's `run`.
pub struct Call {
    pub context: Context,
    /// The resolved `with:` block, as JSON object text.
    pub config: String,
    pub grants: Grants,
    pub limits: Limits,
    /// Receives the plugin's log lines (already redacted) as they are written.
    pub logs: LogSink,
    /// Redacts every secret the run grants to any of its steps, this step's included: a
    /// secret handed on through a file or an output must not show in another step.
    pub redactor: Redactor,
}

/// How a call of `run` ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The plugin returned `ok`.
    Succeeded {
        outputs: serde_json::Map<String, serde_json::Value>,
        summary: String,
    },
    /// The plugin returned `step-error::failed`.
    Failed {
        message: String,
        outputs: serde_json::Map<String, serde_json::Value>,
    },
    /// The plugin returned `step-error::invalid-config`.
    InvalidConfig(String),
    /// The plugin returned `step-error::transient`: worth retrying.
    Transient(String),
    /// The plugin did not return a usable value.
    Fault(Fault),
}

/// How a plugin misbehaved. Every one fails its step; none affects the engine.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// The step ran past its `timeout`.
    Timeout(Duration),
    /// The plugin tried to grow its memories and tables, all together, past the step's
    /// `memory` limit.
    Memory(u64),
    /// The plugin tried to create more instances, memories or tables than a step may have
    /// (`what` says which, `limit` is the cap).
    TooMany { what: &'static str, limit: usize },
    /// The plugin tried to hold more host objects (open files, streams, requests) at once than
    /// a step may; the cap.
    Resources(usize),
    /// The plugin overflowed its wasm stack (the step's `stack` limit).
    StackOverflow(usize),
    /// The plugin panicked; the panic message, as it printed it.
    Panic(String),
    /// Any other trap.
    Trap(String),
    /// The plugin returned outputs that break the contract (not a JSON object, too large).
    BadOutput(String),
    /// The plugin could not be started, e.g. a grant could not be opened.
    Setup(String),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Timeout(d) => {
                write!(
                    f,
                    "timeout: the step ran longer than its limit of {}",
                    fmt_duration(*d)
                )
            }
            Fault::Memory(limit) => write!(
                f,
                "memory limit: the plugin tried to use more than {} of memory",
                fmt_bytes(*limit)
            ),
            Fault::TooMany { what, limit } => write!(
                f,
                "memory limit: the plugin tried to create more than {limit} {what}, the most a step may have"
            ),
            Fault::Resources(limit) => write!(
                f,
                "resource limit: the plugin tried to hold more than {limit} host objects at once (open files, directories, streams, HTTP requests), the most a step may have; close what you no longer need"
            ),
            Fault::StackOverflow(limit) => write!(
                f,
                "stack overflow: the plugin used more than its {} wasm stack",
                fmt_bytes(*limit as u64)
            ),
            Fault::Panic(message) => write!(f, "plugin panicked: {message}"),
            Fault::Trap(message) => write!(f, "plugin crashed: {message}"),
            Fault::BadOutput(message) => write!(f, "bad output: {message}"),
            Fault::Setup(message) => write!(f, "cannot start the plugin: {message}"),
        }
    }
}

/// Formats a byte count the way limits are written in workflows (`256MiB`).
pub fn fmt_bytes(n: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        if n >= size && n.is_multiple_of(size) {
            return format!("{}{unit}", n / size);
        }
    }
    for (size, unit) in UNITS {
        if n >= size {
            return format!("{:.1}{unit}", n as f64 / size as f64);
        }
    }
    format!("{n}B")
}

/// Formats a duration the way limits are written in workflows (`10m`, `1.5s`).
pub fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        format!("{}µs", d.as_micros())
    } else if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// One wasmtime engine and its linker. Engines differ only in their wasm stack limit, which
/// wasmtime fixes per engine; most runs only ever use the default one. The default one also
/// has a twin whose instances come from a pool (see `pool.rs`).
struct EngineSet {
    engine: Engine,
    linker: Linker<StepState>,
    pool: Option<pool::Pool>,
}

/// Loads and runs plugins. One per process; cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostInner>,
}

/// A loaded plugin's identity: the sha256 of its file and the wasm stack size it was built for.
type PluginKey = ([u8; 32], usize);

struct HostInner {
    config: HostConfig,
    engines: Mutex<HashMap<usize, Arc<EngineSet>>>,
    /// Plugins already compiled in this process, by file digest and stack size.
    plugins: Mutex<HashMap<PluginKey, Arc<Plugin>>>,
    /// A turn per plugin being loaded, held while it compiles (see [`Host::load_with`]).
    loading: Mutex<HashMap<PluginKey, Arc<Mutex<()>>>>,
    /// Set when the host is dropped, to stop the epoch ticker.
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for HostInner {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Host {
    pub fn new(config: HostConfig) -> Result<Self> {
        raise_descriptor_limit();
        let host = Host {
            inner: Arc::new(HostInner {
                config,
                engines: Mutex::new(HashMap::new()),
                plugins: Mutex::new(HashMap::new()),
                loading: Mutex::new(HashMap::new()),
                stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            }),
        };
        // Build the default engine now, so configuration errors surface at start.
        host.try_engine_for(shiphat_workflow::DEFAULT_STACK)?;
        Ok(host)
    }

    fn engine_for(&self, stack: usize) -> Arc<EngineSet> {
        self.try_engine_for(stack)
            .expect("an engine with this stack size was built before")
    }

    fn try_engine_for(&self, stack: usize) -> Result<Arc<EngineSet>> {
        let mut engines = self.inner.engines.lock().unwrap();
        if let Some(set) = engines.get(&stack) {
            return Ok(set.clone());
        }
        let config = engine_config(stack);
        let engine = Engine::new(&config).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let linker = sandbox::linker(&engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let pooled = self.inner.config.instance_pool && stack == shiphat_workflow::DEFAULT_STACK;
        let pool = pooled.then(|| pool::Pool::new(config)).flatten();
        let ticked = std::iter::once(&engine).chain(pool.as_ref().map(|pool| &pool.engine));
        spawn_epoch_ticker(ticked.map(Engine::weak).collect(), self.inner.stop.clone());
        let set = Arc::new(EngineSet {
            engine,
            linker,
            pool,
        });
        engines.insert(stack, set.clone());
        Ok(set)
    }

    /// Loads a plugin file: checks the pinned digest if there is one, then compiles it or reads
    /// it from the compile cache. Loading the same content twice in one process is free, and
    /// a file the cache has seen unchanged is not read at all (see `cache.rs`).
    pub fn load(&self, path: &Path, pinned: Option<[u8; 32]>, stack: usize) -> Result<Arc<Plugin>> {
        self.load_with(path, pinned, stack, self.inner.config.on_compile.as_ref())
    }

    /// [`Host::load`], telling `on_compile` instead of [`HostConfig::on_compile`] before a
    /// compile: for a caller that follows one load's progress (the daemon says which plugin of
    /// which workflow compiles), where the host-wide hook cannot say whose load it is.
    pub fn load_with(
        &self,
        path: &Path,
        pinned: Option<[u8; 32]>,
        stack: usize,
        on_compile: Option<&CompileHook>,
    ) -> Result<Arc<Plugin>> {
        let cache_dir = self.inner.config.cache_dir.as_deref();
        let read = || -> Result<(Vec<u8>, cache::KnownFile)> {
            let before = std::fs::metadata(path);
            let bytes = std::fs::read(path).map_err(|source| Error::Read {
                path: path.to_owned(),
                source,
            })?;
            let known = cache::KnownFile {
                sha256: Sha256::digest(&bytes).into(),
                instances_cost: objects::instances_cost(&bytes),
            };
            if let (Some(dir), Ok(before)) = (cache_dir, before) {
                cache::remember_file(dir, path, &before, known, std::time::SystemTime::now());
            }
            Ok((bytes, known))
        };
        let (mut bytes, known) = match cache_dir.and_then(|dir| cache::recall_file(dir, path)) {
            Some(known) => (None, known),
            None => {
                let (bytes, known) = read()?;
                (Some(bytes), known)
            }
        };
        if let Some(expected) = pinned
            && expected != known.sha256
        {
            return Err(Error::DigestMismatch {
                path: path.to_owned(),
                expected: hex::encode(expected),
                actual: hex::encode(known.sha256),
            });
        }
        let key = (known.sha256, stack);
        let loaded = || self.inner.plugins.lock().unwrap().get(&key).cloned();
        if let Some(plugin) = loaded() {
            return Ok(plugin);
        }
        let before_compile = |len| {
            if let Some(CompileHook(hook)) = on_compile {
                hook(path, len);
            }
        };
        // One load of a component at a time: a second load (another workflow of the daemon's
        // with the same plugin) waits for the first instead of compiling it again beside it,
        // and is told of the compile it waits for.
        let turn = self
            .inner
            .loading
            .lock()
            .unwrap()
            .entry(key)
            .or_default()
            .clone();
        let _turn = match turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                let len = std::fs::metadata(path).map_or(0, |m| m.len() as usize);
                before_compile(len);
                turn.lock().unwrap_or_else(|e| e.into_inner())
            }
        };
        if let Some(plugin) = loaded() {
            return Ok(plugin);
        }
        let set = self.try_engine_for(stack)?;
        // Called only when the compile cache has no entry for the digest. A file known by its
        // metadata is read then; should its content not be the digest remembered for it (a
        // write that kept every time, which `cache.rs` guards against), it is refused like a
        // changed pinned file rather than compiled under the wrong name.
        let bytes_of = || -> Result<Vec<u8>> {
            if let Some(bytes) = bytes.take() {
                return Ok(bytes);
            }
            let (bytes, now) = read()?;
            if now.sha256 != known.sha256 {
                return Err(Error::DigestMismatch {
                    path: path.to_owned(),
                    expected: hex::encode(known.sha256),
                    actual: hex::encode(now.sha256),
                });
            }
            Ok(bytes)
        };
        let (component, load) = cache::load(
            &set.engine,
            cache_dir,
            bytes_of,
            &known.sha256,
            &before_compile,
        )
        .map_err(|e| match e {
            cache::LoadError::Source(e) => e,
            cache::LoadError::Compile(e) => Error::Compile {
                path: path.to_owned(),
                message: format!("{e:#}"),
            },
        })?;
        let pre = set
            .linker
            .instantiate_pre(&component)
            .and_then(StepPre::new)
            .map_err(|e| Error::Link {
                path: path.to_owned(),
                message: format!("{e:#}"),
            })?;
        // A component too large for a pool slot is refused by the pool's engine when loaded;
        // its steps then run on the ordinary engine, like every step when slots run out.
        let pooled = set.pool.as_ref().and_then(|pool| {
            cache::load_into(&pool.engine, cache_dir, &known.sha256, &component)
                .and_then(|component| pool.linker.instantiate_pre(&component))
                .and_then(StepPre::new)
                .inspect_err(|e| {
                    tracing::debug!(path = %path.display(), "runs outside the instance pool: {e:#}")
                })
                .ok()
        });
        let plugin = Arc::new(Plugin {
            path: path.to_owned(),
            sha256: known.sha256,
            component,
            pre,
            pooled,
            stack,
            instances_cost: known.instances_cost,
            info: tokio::sync::OnceCell::new(),
            load,
        });
        self.inner
            .plugins
            .lock()
            .unwrap()
            .insert(key, plugin.clone());
        self.inner.loading.lock().unwrap().remove(&key);
        Ok(plugin)
    }

    /// What the plugin's `describe()` says. Asked once per plugin, with nothing granted and
    /// default limits.
    pub async fn describe(&self, plugin: &Plugin) -> Result<PluginInfo> {
        plugin
            .info
            .get_or_try_init(|| self.call_describe(plugin))
            .await
            .cloned()
    }

    /// Asks `describe()`, unless the compile cache remembers its answer for this component.
    async fn call_describe(&self, plugin: &Plugin) -> Result<PluginInfo> {
        let set = self.engine_for(plugin.stack);
        let dir = self.inner.config.cache_dir.as_deref();
        if let Some(info) = dir.and_then(|dir| cache::recall_info(&set.engine, dir, &plugin.sha256))
        {
            return Ok(info);
        }
        let info = self.ask_describe(plugin, &set).await?;
        if let Some(dir) = dir {
            cache::remember_info(&set.engine, dir, &plugin.sha256, &info);
        }
        Ok(info)
    }

    async fn ask_describe(&self, plugin: &Plugin, set: &EngineSet) -> Result<PluginInfo> {
        let limits = Limits {
            stack: plugin.stack,
            ..Limits::default()
        };
        let sink: LogSink = Arc::new(|_| {});
        let describe_error = |message: String| Error::Describe {
            path: plugin.path.clone(),
            message,
        };
        if plugin.instances_cost > limits.memory {
            return Err(describe_error(Fault::Memory(limits.memory).to_string()));
        }
        let state = StepState::new(
            &Grants::default(),
            &limits,
            plugin.instances_cost,
            sandbox::Caps::DESCRIBE,
            Redactor::default(),
            sink,
        )
        .map_err(describe_error)?;
        let mut store = new_store(&set.engine, state, &limits);
        let call = async {
            let instance = plugin.pre.instantiate_async(&mut store).await?;
            instance.call_describe(&mut store).await
        };
        match tokio::time::timeout(limits.timeout + WALL_CLOCK_GRACE, call).await {
            Ok(Ok(info)) => {
                let limit = limits.output_bytes;
                let check =
                    |text: String, what| check_text(text, limit, what).map_err(describe_error);
                Ok(PluginInfo {
                    name: check(info.name, "name")?,
                    version: check(info.version, "version")?,
                    description: check(info.description, "description")?,
                    config_schema: check(info.config_schema, "config-schema")?,
                })
            }
            Ok(Err(e)) => Err(describe_error(
                classify_trap(&e, &store, &limits).to_string(),
            )),
            Err(_) => Err(describe_error(Fault::Timeout(limits.timeout).to_string())),
        }
    }

    /// Runs one attempt of a step in a fresh store. Never fails: whatever the plugin does, the
    /// answer is an [`Outcome`].
    pub async fn run(&self, plugin: &Plugin, call: Call) -> Outcome {
        let set = self.engine_for(plugin.stack);
        let redactor = call.redactor;
        let limits = call.limits;
        if plugin.instances_cost > limits.memory {
            return Outcome::Fault(Fault::Memory(limits.memory));
        }
        // Only a file call can block the thread it runs on (see `on_own_thread`), and a step
        // opens no file that its grants do not hold.
        let may_block = !call.grants.read.is_empty() || !call.grants.write.is_empty();
        let state = match StepState::new(
            &call.grants,
            &limits,
            plugin.instances_cost,
            sandbox::Caps::STEP,
            redactor.clone(),
            call.logs,
        ) {
            Ok(state) => state,
            Err(message) => return Outcome::Fault(Fault::Setup(redactor.redact(&message))),
        };
        // A pool slot when there is a free one; it is held until the store is dropped.
        let slot = set.pool.as_ref().zip(plugin.pooled.as_ref());
        let (engine, pre, slot) =
            match slot.and_then(|(pool, pre)| Some((pool, pre, pool.try_slot()?))) {
                Some((pool, pre, slot)) => (&pool.engine, pre.clone(), Some(slot)),
                None => (&set.engine, plugin.pre.clone(), None),
            };
        let mut store = new_store(engine, state, &limits);
        let input = bindings::StepInput {
            context: bindings::StepContext {
                run_id: call.context.run_id,
                workflow: call.context.workflow,
                step_id: call.context.step_id,
                attempt: call.context.attempt,
                dry_run: call.context.dry_run,
            },
            config: call.config,
        };
        // `abort` ends when the engine gives up on the attempt: the caller stopped waiting (a
        // cancel) or the wall-clock guard passed. Dropping the call then drops the instance.
        let attempt = move |abort: tokio::sync::oneshot::Receiver<()>| async move {
            let call = async {
                let instance = pre.instantiate_async(&mut store).await?;
                instance.call_run(&mut store, &input).await
            };
            let result = tokio::select! {
                biased;
                _ = abort => None,
                result = call => Some(result),
            };
            store.data_mut().finish_logs(!matches!(result, Some(Ok(_))));
            let outcome = match result {
                None => Outcome::Fault(Fault::Timeout(limits.timeout)),
                Some(Err(e)) => Outcome::Fault(classify_trap(&e, &store, &limits)),
                Some(Ok(answer)) => check_answer(answer, limits.output_bytes)
                    .unwrap_or_else(|message| Outcome::Fault(Fault::BadOutput(message))),
            };
            // The instance's memories go back to the pool with the store, then the slot.
            drop(store);
            drop(slot);
            outcome
        };
        let guard = limits.timeout + WALL_CLOCK_GRACE;
        let outcome = if may_block {
            on_own_thread(attempt, guard).await
        } else {
            in_place(attempt, guard).await
        };
        let outcome = outcome.unwrap_or(Outcome::Fault(Fault::Timeout(limits.timeout)));
        redactor.redact_outcome(outcome)
    }
}

/// How long an attempt that passed its wall-clock guard gets to stop once told to, so that its
/// last log lines come before its end. One that does not stop by then is stuck in a system
/// call, and is left to end on its own thread.
const ABORT_GRACE: Duration = Duration::from_secs(1);

/// Runs `attempt` on a thread of its own (tokio's blocking pool, so threads are reused) and
/// waits for it at most `guard`; `None` when it did not end in time.
///
/// A step's file calls block the thread they run on (`allow_blocking_current_thread`, which
/// makes small-file work several times faster than a hop to the blocking pool per call). On a
/// runtime worker, a call that never returns (a FIFO with no writer, a hung network mount)
/// would stall that worker and the step's own timeout with it. Here it stalls only its own
/// thread: the guard still fires, the step still fails, and the engine goes on. `attempt` is
/// handed a receiver that ends when the engine stops waiting, here or because the caller
/// dropped this future (a cancel), so the attempt is dropped at once unless it is stuck.
async fn on_own_thread<F, Fut>(attempt: F, guard: Duration) -> Option<Fut::Output>
where
    F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: std::future::Future,
    Fut::Output: Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let mut task = tokio::task::spawn_blocking(move || runtime.block_on(attempt(stopped)));
    let joined = match tokio::time::timeout(guard, &mut task).await {
        Ok(joined) => joined,
        Err(_) => {
            drop(stop);
            tokio::time::timeout(ABORT_GRACE, task).await.ok()?
        }
    };
    match joined {
        Ok(output) => Some(output),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => None,
    }
}

/// Runs `attempt` on the caller's task and waits for it at most `guard`, like
/// [`on_own_thread`] but without the hand-over to another thread and back (two thread
/// wake-ups, a quarter of a no-op step's cost). Only for an attempt that cannot block its
/// thread: one whose step holds no file grant, so that every call it makes into the host
/// yields (timers, HTTP, logs) or returns at once. Busy wasm yields the worker at every epoch
/// tick (`new_store`), so it cannot starve the steps beside it either; but the steps of one run
/// are futures of the run's task, so two of them that compute take turns on one worker instead
/// of using two. A task per attempt would keep that parallelism and cost more than the thread
/// did (72 µs a no-op step against 60 to 69; in place, 35), by the other worker stealing it.
async fn in_place<F, Fut>(attempt: F, guard: Duration) -> Option<Fut::Output>
where
    F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: std::future::Future,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut attempt = std::pin::pin!(attempt(stopped));
    match tokio::time::timeout(guard, &mut attempt).await {
        Ok(output) => Some(output),
        Err(_) => {
            drop(stop);
            tokio::time::timeout(ABORT_GRACE, attempt).await.ok()
        }
    }
}

/// The configuration of the engine for plugins with a wasm stack of `stack` bytes.
fn engine_config(stack: usize) -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .max_wasm_stack(stack)
        .async_stack_size(stack + HOST_STACK_HEADROOM);
    config
}

fn new_store(engine: &Engine, state: StepState, limits: &Limits) -> Store<StepState> {
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.limiter);
    store.set_hostcall_fuel(hostcall_bytes(limits));
    let deadline = Instant::now() + limits.timeout;
    store.data_mut().deadline = deadline;
    store.set_epoch_deadline(1);
    // Each tick, either give the worker thread back to tokio (so a busy plugin cannot starve
    // the steps running beside it) or, past the deadline, stop the plugin with a trap.
    store.epoch_deadline_callback(move |ctx| {
        if Instant::now() >= ctx.data().deadline {
            Ok(wasmtime::UpdateDeadline::Interrupt)
        } else {
            Ok(wasmtime::UpdateDeadline::Yield(1))
        }
    });
    store
}

/// The least the engine lets a plugin pass it in one call (a string, a list), whatever the
/// step's limits: far more than a real plugin logs or writes at once (WASI streams take at most
/// a few KiB per write), and an eighth of wasmtime's default of 128 MiB.
const MIN_HOSTCALL_BYTES: usize = 16 * 1024 * 1024;

/// How much a plugin may pass the engine in one call: enough for everything a step may keep
/// (its outputs and summary or message, a log line), and no more, so a plugin cannot make the
/// host copy hundreds of megabytes only to refuse them.
fn hostcall_bytes(limits: &Limits) -> usize {
    let keepable = limits
        .output_bytes
        .saturating_mul(2)
        .saturating_add(limits.log_bytes);
    MIN_HOSTCALL_BYTES.max(keepable)
}

/// What wasmtime says when a call passes more than [`hostcall_bytes`].
const HOSTCALL_EXHAUSTED: &str = "fuel allocated for hostcalls has been exhausted";

/// Names the limit or crash behind a trap.
fn classify_trap(error: &wasmtime::Error, store: &Store<StepState>, limits: &Limits) -> Fault {
    let state = store.data();
    if state.limiter.hit {
        return Fault::Memory(limits.memory);
    }
    let text = format!("{error:#}");
    if let Some(fault) = engine_cap(&text, limits, state.limiter.caps) {
        return fault;
    }
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => return Fault::Timeout(limits.timeout),
        Some(wasmtime::Trap::StackOverflow) => return Fault::StackOverflow(limits.stack),
        _ => {}
    }
    if let Some(message) = state.panic_message() {
        return Fault::Panic(message);
    }
    // Rust's allocator aborts when memory.grow fails; the limiter above saw it, but a
    // plugin can also hit wasm's own 4 GiB ceiling.
    Fault::Trap(state.redactor.redact(text.lines().next().unwrap_or("trap")))
}

/// Recognises, in wasmtime's words, a step cap the plugin ran into: the object counts
/// (`resource limit exceeded: {what} count too high at {n}`), the resource table (`resource
/// table has no free keys`) and the hostcall fuel.
fn engine_cap(text: &str, limits: &Limits, caps: sandbox::Caps) -> Option<Fault> {
    let counts = [
        ("instance", "instances", caps.instances),
        ("memory", "memories", caps.memories),
        ("table", "tables", caps.tables),
    ];
    let count = counts.into_iter().find_map(|(name, what, limit)| {
        text.contains(&format!("resource limit exceeded: {name} count too high"))
            .then_some(Fault::TooMany { what, limit })
    });
    if count.is_some() {
        count
    } else if text.contains("resource table has no free keys") {
        Some(Fault::Resources(sandbox::MAX_RESOURCES))
    } else if text.contains(HOSTCALL_EXHAUSTED) {
        Some(Fault::BadOutput(format!(
            "the plugin passed more than {} to the engine in one call, more than a step can keep",
            fmt_bytes(hostcall_bytes(limits) as u64)
        )))
    } else {
        None
    }
}

/// Turns what `run` returned into an [`Outcome`], checking every string against the step's
/// output limit: outputs must be a JSON object, and no text, however it is returned, may be
/// longer than the limit.
fn check_answer(
    answer: std::result::Result<bindings::StepOutput, bindings::StepError>,
    limit: usize,
) -> std::result::Result<Outcome, String> {
    Ok(match answer {
        Ok(out) => Outcome::Succeeded {
            outputs: parse_outputs(&out.outputs, limit, "outputs")?,
            summary: check_text(out.summary, limit, "summary")?,
        },
        Err(bindings::StepError::Failed(failure)) => Outcome::Failed {
            outputs: parse_outputs(&failure.outputs, limit, "failure outputs")?,
            message: check_text(failure.message, limit, "failure message")?,
        },
        Err(bindings::StepError::InvalidConfig(message)) => {
            Outcome::InvalidConfig(check_text(message, limit, "invalid-config message")?)
        }
        Err(bindings::StepError::Transient(message)) => {
            Outcome::Transient(check_text(message, limit, "transient message")?)
        }
    })
}

/// Checks a text a plugin returned against the step's output limit.
fn check_text(text: String, limit: usize, what: &str) -> std::result::Result<String, String> {
    if text.len() > limit {
        return Err(format!(
            "the plugin's {what} is {} long, over the step's output_limit of {}",
            fmt_bytes(text.len() as u64),
            fmt_bytes(limit as u64)
        ));
    }
    Ok(text)
}

/// Checks an `outputs` text from a plugin: a JSON object within the output limit. An empty
/// text counts as `{}`, which is what a plugin that has nothing to say naturally returns.
fn parse_outputs(
    text: &str,
    limit: usize,
    what: &str,
) -> std::result::Result<serde_json::Map<String, serde_json::Value>, String> {
    if text.len() > limit {
        return Err(format!(
            "the plugin's {what} are {} long, over the step's output_limit of {}",
            fmt_bytes(text.len() as u64),
            fmt_bytes(limit as u64)
        ));
    }
    if text.trim().is_empty() {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(other) => Err(format!(
            "the plugin's {what} must be a JSON object, got {}",
            json_kind(&other)
        )),
        Err(e) => Err(format!("the plugin's {what} are not valid JSON: {e}")),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Raises the process's soft limit on open descriptors to its hard limit, once. Each step
/// holds up to [`sandbox::MAX_RESOURCES`] descriptors, and the daemon must still accept
/// connections and read its workflow directories while steps run; the soft limit (often
/// 1024) is a default for programs that never expect many, not a policy.
fn raise_descriptor_limit() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let limit = getrlimit(Resource::Nofile);
            if limit.current != limit.maximum {
                let raised = Rlimit {
                    current: limit.maximum,
                    maximum: limit.maximum,
                };
                if let Err(e) = setrlimit(Resource::Nofile, raised) {
                    tracing::warn!("cannot raise the open-file limit to its hard limit: {e}");
                }
            }
        });
    }
}

/// Advances the epochs of an engine and its pool twin every [`EPOCH_TICK`] until they or the
/// host are gone. A plain thread, not a tokio task: it must tick even when every worker is
/// busy in wasm.
fn spawn_epoch_ticker(
    engines: Vec<wasmtime::EngineWeak>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    std::thread::Builder::new()
        .name("shiphat-epoch".into())
        .spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                let mut alive = false;
                for engine in engines.iter().filter_map(wasmtime::EngineWeak::upgrade) {
                    engine.increment_epoch();
                    alive = true;
                }
                if !alive {
                    break;
                }
            }
        })
        .expect("spawning a thread at start-up");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_must_be_a_json_object_within_the_limit() {
        assert!(parse_outputs("{\"a\":1}", 100, "outputs").is_ok());
        assert!(parse_outputs("", 100, "outputs").unwrap().is_empty());
        let err = parse_outputs("[1]", 100, "outputs").unwrap_err();
        assert_eq!(
            err,
            "the plugin's outputs must be a JSON object, got an array"
        );
        let err = parse_outputs("not json", 100, "outputs").unwrap_err();
        assert!(
            err.starts_with("the plugin's outputs are not valid JSON"),
            "{err}"
        );
        let err = parse_outputs(&"x".repeat(2048), 1024, "outputs").unwrap_err();
        assert_eq!(
            err,
            "the plugin's outputs are 2KiB long, over the step's output_limit of 1KiB"
        );
    }

    #[test]
    fn sizes_and_durations_print_as_written_in_workflows() {
        assert_eq!(fmt_bytes(256 << 20), "256MiB");
        assert_eq!(fmt_bytes(1536), "1.5KiB");
        assert_eq!(fmt_bytes(12), "12B");
        assert_eq!(fmt_duration(Duration::from_secs(600)), "10m");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(fmt_duration(Duration::from_millis(200)), "200ms");
    }
}
