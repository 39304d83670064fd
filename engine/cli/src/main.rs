//! The `shiphat` command line. The only place in shiphat that prints to the terminal or
//! picks an exit code.

// Everything goes through `outln!` and `errln!`, which survive a closed pipe: a run must reach
// its end (verify, on_failure, finally) whatever happens to its output.
#![deny(clippy::print_stdout, clippy::print_stderr)]

/// `println!` that ignores a closed or broken stdout (`shiphat run … | head`) instead of
/// panicking, as cargo and git do.
macro_rules! outln {
    () => { outln!("") };
    ($($arg:tt)*) => { $crate::output::write_line(&mut ::std::io::stdout().lock(), format_args!($($arg)*)) };
}

/// `eprintln!` that ignores a closed or broken stderr.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_line(&mut ::std::io::stderr().lock(), format_args!($($arg)*)) };
}

mod ask;
mod backtest;
mod client;
mod oci_cmd;
mod output;
mod plugin_cmd;
mod serve;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use shiphat_host::{Host, HostConfig};
use shiphat_runner::{PluginPath, Prepared, RunOptions, RunOutcome, Runner, Secrets, Stop};

/// Exit codes, documented in `shiphat --help` and the README.
mod exit {
    /// The workflow succeeded (or the command did what it was asked).
    pub const OK: u8 = 0;
    /// The workflow failed: a step failed, and any `on_failure` steps ran.
    pub const FAILED: u8 = 1;
    /// Invalid input: a bad workflow, a bad `--input`, a missing file. Nothing ran.
    pub const INVALID: u8 = 2;
    /// An internal error of shiphat itself.
    pub const INTERNAL: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit codes:
  0  the workflow succeeded
  1  the workflow failed (a step failed; any on_failure steps ran)
  2  invalid input (bad workflow, bad --input, missing file); nothing ran
  3  internal error

Environment:
  SHIPHAT_PLUGIN_PATH   more directories to search for `uses: NAME` plugins
  SHIPHAT_CACHE_DIR     where compiled plugins are cached
  SHIPHAT_SECRETS_FILE  a NAME=value file of secrets (the environment is also read)
  SHIPHAT_SERVER        a daemon's URL: `run`, `runs`, `lock` and `unlock` talk to it
  SHIPHAT_TOKEN         the API token sent to the daemon
  RUST_LOG              diagnostics filter, e.g. RUST_LOG=shiphat_host=debug";

#[derive(Parser)]
#[command(name = "shiphat", version, about = "Deploy workflows of sandboxed WebAssembly plugins", after_help = AFTER_HELP)]
struct Cli {
    /// Print diagnostics to stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a workflow file.
    Run {
        /// The workflow file (YAML).
        file: PathBuf,
        /// A workflow input, `NAME=VALUE`; repeat for several.
        #[arg(short, long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Write JSON Lines events to stdout instead of the human view (see docs/events.md).
        #[arg(long)]
        json: bool,
        /// Ask every plugin to report what it would do and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Approve this approval step in advance instead of being asked at the terminal;
        /// repeat for several. Without a terminal, an approval step that is not approved
        /// this way fails.
        #[arg(long = "approve", value_name = "STEP")]
        approve: Vec<String>,
        /// Run on this daemon (e.g. http://127.0.0.1:7300) instead of here; FILE may then
        /// also be the name of a workflow the daemon serves. An exported `SHIPHAT_SERVER`
        /// makes every `run` remote; unset it (or `SHIPHAT_SERVER= shiphat run`) to run here.
        #[arg(long, value_name = "URL", env = "SHIPHAT_SERVER")]
        server: Option<String>,
        /// The bearer token for `--server`; ignored by a local run, so an exported
        /// `SHIPHAT_TOKEN` never gets in the way of one.
        #[arg(long, env = "SHIPHAT_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Run the daemon: an HTTP API that runs workflows, keeps their history and guards them
    /// with tokens and locks, and a web page at `/` to deploy and watch runs (see
    /// docs/daemon.md).
    Serve {
        /// The address to listen on, instead of the config's (e.g. 127.0.0.1:0 for any port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
        /// A directory of workflows to serve, instead of the config's; repeat for several.
        #[arg(long = "workflows", value_name = "DIR")]
        workflows: Vec<PathBuf>,
        #[command(flatten)]
        daemon: serve::DaemonArgs,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Manage the daemon's API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Look at and act on a daemon's runs.
    Runs {
        #[command(subcommand)]
        command: client::RunsCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Ask a daemon why: `shiphat why deploy WORKFLOW --input environment=production` says,
    /// without running anything, whether you could deploy now, and if not the first reason.
    Why {
        #[command(subcommand)]
        command: WhyCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Lock a concurrency key (or workflow) on a daemon: new runs on it are refused.
    Lock {
        key: String,
        /// Why, shown to whoever is refused.
        #[arg(long)]
        reason: String,
        /// Release the lock by itself after this long, e.g. `2h`.
        #[arg(long, value_name = "DURATION")]
        expires_in: Option<String>,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// List the locks held on a daemon.
    Locks {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Release a lock on a daemon.
    Unlock {
        key: String,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Check workflow files, plugins included, without running anything.
    Validate {
        /// Workflow files (YAML).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also say, for every step, when it runs: its `if` as GitHub Actions' rules read it
        /// (`success() && (…)` unless it calls a status function).
        #[arg(long)]
        explain_if: bool,
        /// Also print what changed in what each step may reach (directories, hosts,
        /// variables, secrets, the plugin), from this older version of the one FILE.
        #[arg(long, value_name = "OLD.yaml", conflicts_with = "against_git")]
        against: Option<PathBuf>,
        /// The same, from each FILE as it was at this git revision (e.g. `HEAD~1`, `main`).
        #[arg(long, value_name = "REV")]
        against_git: Option<String>,
        /// With `--against` or `--against-git`: exit 1 when a grant widened (a new grant, a
        /// new step with grants, or another plugin), so CI can ask for a second review.
        #[arg(long)]
        deny_widening: bool,
        /// Fill the compile cache with every plugin the workflows use, saying for each whether
        /// it was compiled now or was there already: run it where deploys run (a CI image, a
        /// deploy host, before a daemon starts) so that no deploy waits for a first compile.
        /// (Checking compiles what it checks anyway; `--warm` says so, and refuses
        /// `--no-cache`.)
        #[arg(long)]
        warm: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Print a workflow's handbook in Markdown, for someone who has never seen its YAML:
    /// its inputs, each step in plain words, what each may touch, what makes it fail and what
    /// happens then.
    Explain {
        /// The workflow file (YAML).
        file: PathBuf,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Check a verification step against the past: `shiphat verify backtest FILE --since 30d`
    /// replays its conditions over each past deploy's metrics and prints what it would have
    /// said beside what happened.
    Verify {
        #[command(subcommand)]
        command: VerifyCommand,
    },
    /// Work with plugin files.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Print a JSON Schema of the workflow file format, for editors.
    Schema,
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Would this step's conditions, as the file has them now, have caught the bad deploys and
    /// let the good ones through? Each past deploy of the workflow on a daemon (`--server`),
    /// or each `--at` time, is replayed against what Prometheus recorded then (nothing is
    /// deployed), and its verdict printed beside what happened.
    Backtest(backtest::BacktestArgs),
}

#[derive(Subcommand)]
enum WhyCommand {
    /// Whether you could start WORKFLOW now: role, pattern, inputs, lock, deploy window, a run
    /// holding its key. Exit 0 if it would be accepted, 1 if not.
    Deploy {
        workflow: String,
        /// A workflow input, `NAME=VALUE`; repeat for several.
        #[arg(short, long = "input", value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Ask about a dry run, which no deploy window holds.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a principal and print it (once; only its SHA-256 is stored).
    Create {
        /// The principal's name, as the audit log will show it.
        name: String,
        /// viewer, deployer or admin; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// WORKFLOW or WORKFLOW/ENVIRONMENT globs the principal may run; repeat for several.
        #[arg(long = "pattern")]
        patterns: Vec<String>,
        #[command(flatten)]
        daemon: serve::DaemonArgs,
    },
    /// Delete the token of a principal (its sessions end at once).
    Delete {
        /// The principal's name.
        name: String,
        #[command(flatten)]
        daemon: serve::DaemonArgs,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Show what a plugin says about itself and what it imports.
    Inspect {
        /// The plugin: a component file (.wasm), a name looked up as `uses: NAME` is, or an
        /// `oci://REGISTRY/REPOSITORY:TAG` reference, pulled into the cache first.
        #[arg(value_name = "FILE|NAME|OCI")]
        file: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Publish a component to an OCI registry, in the Wasm OCI Artifact layout, annotated
    /// from its own `describe()`.
    Push(Box<oci_cmd::PushArgs>),
    /// Fetch a plugin from an OCI registry into the cache, and compile it there.
    Pull(Box<oci_cmd::PullArgs>),
    /// Pin every `oci://` plugin of the workflows to a digest in `shiphat.lock` beside them
    /// (written, or updated showing what changed).
    Lock(Box<oci_cmd::LockArgs>),
    /// Write a plugin skeleton that builds as it is: source, WIT, README and a workflow.
    New(plugin_cmd::NewArgs),
    /// Run one step of a plugin outside any workflow and print its result, outputs and logs.
    Test(Box<plugin_cmd::TestArgs>),
}

/// Settings of the plugin engine shared by the commands that load plugins.
#[derive(clap::Args)]
struct EngineArgs {
    /// A directory to search for `uses: NAME` plugins, before the defaults; repeat for several.
    #[arg(long, value_name = "DIR")]
    plugin_path: Vec<PathBuf>,
    /// Where compiled plugins are cached [default: the user's cache directory].
    #[arg(long, value_name = "DIR", env = "SHIPHAT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile every plugin afresh and keep nothing; beats `--cache-dir` and an exported
    /// `SHIPHAT_CACHE_DIR`.
    #[arg(long)]
    no_cache: bool,
    /// A file of `NAME=value` secrets, read before the environment.
    #[arg(long, value_name = "FILE", env = "SHIPHAT_SECRETS_FILE")]
    secrets_file: Option<PathBuf>,
    /// Refuse an `oci://` plugin that `shiphat.lock` does not pin, or whose tag the registry
    /// has moved since (the daemon always does).
    #[arg(long)]
    locked: bool,
}

impl EngineArgs {
    /// A runner for a command that runs one workflow, or none, and exits.
    fn runner(&self) -> anyhow::Result<Runner> {
        self.build_runner(false)
    }

    /// A runner for the daemon, which runs steps for as long as it lives: its steps take their
    /// instances from a pool.
    fn daemon_runner(&self) -> anyhow::Result<Runner> {
        self.build_runner(true)
    }

    /// Where plugins pulled from OCI registries are kept: `oci/` in the cache directory
    /// (`--cache-dir`, else the user's), which `--no-cache` leaves in use, since a pulled
    /// plugin has nowhere else to be.
    fn oci_dir(&self) -> anyhow::Result<PathBuf> {
        self.cache_dir
            .clone()
            .or_else(|| dirs::cache_dir().map(|d| d.join("shiphat").join("components")))
            .map(|d| d.join("oci"))
            .ok_or_else(|| {
                Invalid("this user has no cache directory; give one with `--cache-dir`".into())
                    .into()
            })
    }

    fn registry(&self) -> anyhow::Result<Arc<shiphat_oci::Registry>> {
        Ok(Arc::new(
            shiphat_oci::Registry::new(self.oci_dir()?).map_err(|e| Invalid(e.to_string()))?,
        ))
    }

    fn build_runner(&self, instance_pool: bool) -> anyhow::Result<Runner> {
        let cache_dir = if self.no_cache {
            None
        } else {
            self.cache_dir
                .clone()
                .or_else(|| dirs::cache_dir().map(|d| d.join("shiphat").join("components")))
        };
        let cached = cache_dir.is_some();
        let on_compile = shiphat_host::CompileHook(Arc::new(move |path: &Path, size: usize| {
            let mut name = path
                .file_name()
                .unwrap_or(path.as_os_str())
                .to_string_lossy()
                .into_owned();
            // A pulled plugin's file is named by its digest (engine/oci's cache).
            if path
                .parent()
                .is_some_and(|p| p.ends_with("oci/blobs/sha256"))
            {
                name = format!("pulled plugin sha256:{}…", name.get(..12).unwrap_or(&name));
            }
            let when = if cached {
                "first run only"
            } else {
                "--no-cache compiles every run"
            };
            output::note(&format!(
                "compiling {name} ({}), {when}",
                shiphat_protocol::fmt_size(size as u64)
            ));
        }));
        let host = Host::new(HostConfig {
            cache_dir,
            on_compile: Some(on_compile),
            instance_pool,
        })?;
        let mut secrets = Secrets::from_env();
        if let Some(file) = &self.secrets_file {
            secrets = secrets.with_file(file).map_err(Invalid)?;
        }
        // The daemon runs only what the lock files pin, as `--locked` does.
        let mode = if self.locked || instance_pool {
            shiphat_oci::Mode::Locked
        } else {
            shiphat_oci::Mode::Normal
        };
        Ok(
            Runner::new(host, PluginPath::new(self.plugin_dirs()), secrets)
                .with_registry(self.registry()?, mode),
        )
    }

    /// `--plugin-path` first, then the plugins built in this source tree, then the
    /// `plugins` directory beside the binary, then `SHIPHAT_PLUGIN_PATH`.
    fn plugin_dirs(&self) -> Vec<PathBuf> {
        let mut dirs = self.plugin_path.clone();
        let built = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../plugins/target/wasm32-wasip2/release");
        if let Ok(built) = built.canonicalize() {
            dirs.push(built);
        }
        if let Some(beside) = std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("plugins")))
            && beside.is_dir()
        {
            dirs.push(beside);
        }
        if let Some(extra) = std::env::var_os("SHIPHAT_PLUGIN_PATH") {
            dirs.extend(PluginPath::parse_env(&extra));
        }
        dirs
    }
}

/// An error in what the user gave us: exit code 2.
#[derive(Debug)]
struct Invalid(String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::INTERNAL);
        }
    };
    let one_shot = matches!(cli.command, Command::Run { .. });
    let result = runtime.block_on(dispatch(cli.command));
    // A one-shot run has printed its outcome, and each step's store closed what it held: the
    // process exits now, without joining the runtime's idle threads or waiting for plugins
    // still running after a cancelled run. Other commands (the daemon's store among them)
    // get their tasks dropped first; plugins still running must not hold the process open.
    if !one_shot {
        runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    }
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            let code = if e.is::<Invalid>()
                || e.is::<shiphat_workflow::Error>()
                || e.is::<shiphat_runner::Error>()
            {
                exit::INVALID
            } else {
                exit::INTERNAL
            };
            output::error(&e);
            code
        }
    };
    // stdout is flushed here because `exit` does not; stderr is not buffered.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    std::process::exit(i32::from(code));
}

fn init_tracing(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // No colour codes in a log file or a pipe (`shiphat serve 2> serve.log`).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

async fn dispatch(command: Command) -> anyhow::Result<u8> {
    match command {
        Command::Run {
            file,
            inputs,
            json,
            dry_run,
            approve,
            server: Some(server),
            token,
            engine: _,
        } if !server.is_empty() => {
            if let Some(step) = approve.first() {
                return Err(Invalid(format!(
                    "--approve {step}: on a daemon, approvers decide once the run waits: `shiphat runs approve RUN --step {step}`"
                ))
                .into());
            }
            client::run(&server, token, &file, &inputs, json, dry_run)
        }
        Command::Run {
            file,
            inputs,
            json,
            dry_run,
            approve,
            engine,
            ..
        } => run(&file, &inputs, json, dry_run, approve, &engine).await,
        Command::Serve {
            listen,
            workflows,
            daemon,
            engine,
        } => serve::serve(&daemon, listen, &workflows, &engine).await,
        Command::Token {
            command:
                TokenCommand::Create {
                    name,
                    roles,
                    patterns,
                    daemon,
                },
        } => serve::token_create(&daemon, &name, &roles, &patterns),
        Command::Token {
            command: TokenCommand::Delete { name, daemon },
        } => serve::token_delete(&daemon, &name),
        Command::Runs { command, server } => client::runs(&server, command),
        Command::Lock {
            key,
            reason,
            expires_in,
            server,
        } => client::lock(&server, &key, &reason, expires_in.as_deref()),
        Command::Unlock { key, server } => client::unlock(&server, &key),
        Command::Why {
            command:
                WhyCommand::Deploy {
                    workflow,
                    inputs,
                    dry_run,
                },
            server,
        } => client::why_deploy(&server, &workflow, &inputs, dry_run),
        Command::Locks { json, server } => client::locks(&server, json),
        Command::Validate {
            files,
            explain_if,
            warm,
            against,
            against_git,
            deny_widening,
            engine,
        } => {
            let code = validate(&files, explain_if, warm, &engine).await?;
            let old = match (against, against_git) {
                (Some(file), _) => Some(Against::File(file)),
                (None, Some(rev)) => Some(Against::Git(rev)),
                (None, None) if deny_widening => {
                    return Err(Invalid(
                        "`--deny-widening` needs `--against OLD.yaml` or `--against-git REV`"
                            .into(),
                    )
                    .into());
                }
                (None, None) => None,
            };
            match old {
                Some(old) if code == exit::OK => grant_changes(&files, &old, deny_widening),
                _ => Ok(code),
            }
        }
        Command::Explain { file, engine } => {
            let runner = engine.runner()?;
            match prepare(&runner, &file).await {
                Ok(prepared) => {
                    outln!("{}", shiphat_runner::handbook(&prepared).trim_end());
                    Ok(exit::OK)
                }
                Err(e) if e.is::<shiphat_workflow::Error>() || e.is::<shiphat_runner::Error>() => {
                    output::error(&e);
                    Ok(exit::INVALID)
                }
                Err(e) => Err(e),
            }
        }
        Command::Verify {
            command: VerifyCommand::Backtest(args),
        } => backtest::backtest(args).await,
        Command::Plugin {
            command: PluginCommand::Inspect { file, json, engine },
        } => inspect(&file, json, &engine).await,
        Command::Plugin {
            command: PluginCommand::New(args),
        } => plugin_cmd::new(&args),
        Command::Plugin {
            command: PluginCommand::Push(args),
        } => oci_cmd::push(&args).await,
        Command::Plugin {
            command: PluginCommand::Pull(args),
        } => oci_cmd::pull(&args).await,
        Command::Plugin {
            command: PluginCommand::Lock(args),
        } => oci_cmd::lock(&args).await,
        Command::Plugin {
            command: PluginCommand::Test(args),
        } => plugin_cmd::test(&args).await,
        Command::Schema => {
            outln!(
                "{}",
                serde_json::to_string_pretty(&shiphat_workflow::json_schema())?
            );
            Ok(exit::OK)
        }
    }
}

/// Loads a workflow and its plugins, reporting every problem found.
async fn prepare(runner: &Runner, file: &Path) -> anyhow::Result<Prepared> {
    let workflow = shiphat_workflow::load(file)?;
    Ok(runner.prepare(workflow).await?)
}

/// The `--input NAME=VALUE` pairs as the workflow's typed inputs, defaults filled in.
fn resolve_inputs(
    workflow: &shiphat_workflow::Workflow,
    inputs: &[String],
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let given = inputs
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
                .ok_or_else(|| Invalid(format!("--input `{pair}` must be NAME=VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    workflow.resolve_inputs(&given).map_err(|problems| {
        Invalid(
            problems
                .iter()
                .map(|p| format!("--input: {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .into()
    })
}

async fn run(
    file: &Path,
    inputs: &[String],
    json: bool,
    dry_run: bool,
    approve: Vec<String>,
    engine: &EngineArgs,
) -> anyhow::Result<u8> {
    let runner = engine.runner()?;
    let prepared = prepare(&runner, file).await?;
    let approval_steps: Vec<&str> = prepared
        .workflow
        .all_steps()
        .filter(|s| matches!(s.kind, shiphat_workflow::StepKind::Approval(_)))
        .map(|s| s.id.as_str())
        .collect();
    if let Some(step) = approve
        .iter()
        .find(|step| !approval_steps.contains(&step.as_str()))
    {
        let known = if approval_steps.is_empty() {
            "it has none".to_owned()
        } else {
            format!("its approval steps are {}", approval_steps.join(", "))
        };
        return Err(Invalid(format!(
            "--approve {step}: `{}` has no approval step `{step}`; {known}",
            file.display()
        ))
        .into());
    }
    let runner = runner.with_approver(Arc::new(ask::Terminal { approved: approve }));
    let inputs = resolve_inputs(&prepared.workflow, inputs)?;
    let options = RunOptions {
        run_id: shiphat_runner::new_run_id(),
        inputs,
        dry_run,
    };
    let sink = if json {
        output::json_sink()
    } else {
        output::human_sink(&prepared.workflow)
    };
    let stop = Stop::new();
    let signals = stop_on_signals(stop.clone())?;
    let report = runner
        .run(&prepared, options, sink.clone(), stop.clone())
        .await;
    signals.abort();
    drop(sink);
    if stop.is_aborted() {
        output::aborted(&report);
    }
    // The process ends right after this: unmapping every plugin's machine code, its engine
    // and their memory one by one would cost milliseconds of a one-shot deploy that the
    // kernel does at once at exit. Nothing they hold needs a goodbye: every file a step wrote
    // is closed with its store, and the report is printed.
    std::mem::forget(prepared);
    std::mem::forget(runner);
    Ok(match report.status {
        RunOutcome::Succeeded => exit::OK,
        RunOutcome::Failed | RunOutcome::Cancelled => exit::FAILED,
    })
}

/// The first Ctrl-C or SIGTERM cancels the run: the running step ends and the safety net
/// (`on_failure`, `finally`) still runs. The next one aborts at once. The handlers are in
/// place when this returns, before the run starts.
fn stop_on_signals(stop: Stop) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if stop.escalate() {
                output::note("aborting: the running steps end now and nothing more starts");
                return;
            }
            output::note(
                "cancelling: the running steps end; on_failure and finally still run \
                 (press Ctrl-C again to abort at once)",
            );
        }
    }))
}

async fn validate(
    files: &[PathBuf],
    explain_if: bool,
    warm: bool,
    engine: &EngineArgs,
) -> anyhow::Result<u8> {
    if warm && engine.no_cache {
        return Err(
            Invalid("--warm fills the compile cache, which --no-cache turns off".into()).into(),
        );
    }
    let runner = engine.runner()?;
    let mut code = exit::OK;
    // Each plugin is said once, however many steps and files use it.
    let mut warmed = std::collections::HashSet::new();
    for file in files {
        match prepare(&runner, file).await {
            Ok(prepared) => {
                for warning in &prepared.workflow.warnings {
                    output::warn(&warning.to_string());
                }
                if explain_if {
                    output::explain_if(&prepared.workflow);
                }
                for (_, plugin, _) in prepared.plugins().filter(|_| warm) {
                    if warmed.insert((plugin.path().to_owned(), plugin.digest())) {
                        output::warmed(plugin.path(), plugin.load);
                    }
                }
                let steps = prepared.workflow.all_steps().count();
                output::note(&format!("{}: ok ({} steps)", file.display(), steps));
            }
            Err(e) if e.is::<shiphat_workflow::Error>() || e.is::<shiphat_runner::Error>() => {
                output::error(&e);
                code = exit::INVALID;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(code)
}

/// What `validate` compares a workflow with.
enum Against {
    File(PathBuf),
    Git(String),
}

/// Prints each file's grant changes (stdout); exit 1 when one widened and `deny` says so.
fn grant_changes(files: &[PathBuf], against: &Against, deny: bool) -> anyhow::Result<u8> {
    if matches!(against, Against::File(_)) && files.len() != 1 {
        return Err(Invalid(
            "`--against OLD.yaml` compares one workflow file; give one FILE, or use `--against-git REV` for several".into(),
        )
        .into());
    }
    let mut widened = false;
    for file in files {
        let new = shiphat_workflow::load(file)?;
        let old = match against {
            Against::File(old) => shiphat_workflow::load(old)?,
            Against::Git(rev) => match git_show(file, rev)? {
                // Read as if it were at the new file's place, so paths resolve the same way.
                Some(text) => shiphat_workflow::parse(&text, file)
                    .with_context(|| format!("{} at `{rev}`", file.display()))?,
                None => {
                    outln!("{}: new since `{rev}`", file.display());
                    shiphat_workflow::Workflow {
                        steps: Vec::new(),
                        on_failure: Vec::new(),
                        finally: Vec::new(),
                        ..new.clone()
                    }
                }
            },
        };
        // What a tag runs is what the lock beside the workflow pins: a lock update that moves
        // a tag to other code is a plugin change as much as an edit of `uses:` is.
        let new_lock = shiphat_oci::Lock::path_for(file);
        let old_lock = match against {
            Against::File(old) => shiphat_oci::Lock::read(&shiphat_oci::Lock::path_for(old)),
            Against::Git(rev) => match git_show(&new_lock, rev)? {
                Some(text) => shiphat_oci::Lock::parse(&new_lock, &text),
                None => Ok(shiphat_oci::Lock::empty(new_lock.clone())),
            },
        };
        let new_lock = shiphat_oci::Lock::read(&new_lock);
        let (old_lock, new_lock) = (
            old_lock.map_err(|e| Invalid(e.to_string()))?,
            new_lock.map_err(|e| Invalid(e.to_string()))?,
        );
        let (mut old, mut new) = (old, new);
        pin_locked(&mut old, &old_lock);
        pin_locked(&mut new, &new_lock);
        let diff = shiphat_workflow::grant_diff(&old, &new);
        widened |= diff.widened();
        outln!("{}:", file.display());
        for line in diff.to_string().lines() {
            outln!("  {line}");
        }
    }
    Ok(if deny && widened {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// Pins each `oci://` step that names a tag only to the digest `lock` gives it.
fn pin_locked(workflow: &mut shiphat_workflow::Workflow, lock: &shiphat_oci::Lock) {
    let steps = workflow
        .steps
        .iter_mut()
        .chain(&mut workflow.on_failure)
        .chain(&mut workflow.finally);
    for step in steps {
        if let shiphat_workflow::StepKind::Plugin(shiphat_workflow::PluginRef::Oci(r)) =
            &mut step.kind
            && r.digest.is_none()
            && let Some(entry) = lock.get(r)
        {
            *r = r.pinned(&entry.digest);
        }
    }
}

/// `FILE` as it was at `rev`; `None` when it did not exist then.
fn git_show(file: &Path, rev: &str) -> anyhow::Result<Option<String>> {
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = file.file_name().context("a workflow file has a name")?;
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .arg("show")
        .arg(format!("{rev}:./{}", name.to_string_lossy()))
        .output()
        .context("cannot run `git` for `--against-git`")?;
    if output.status.success() {
        return Ok(Some(
            String::from_utf8(output.stdout).context("the old version is not UTF-8")?,
        ));
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("does not exist in") || stderr.contains("exists on disk, but not in") {
        return Ok(None);
    }
    Err(Invalid(format!(
        "`git show {rev}:{}` failed: {}",
        file.display(),
        stderr.trim()
    ))
    .into())
}

async fn inspect(file: &Path, json: bool, engine: &EngineArgs) -> anyhow::Result<u8> {
    let runner = engine.runner()?;
    let host = runner.host();
    // A name (`deployer`) is looked up as `uses: deployer` would be; a path is taken as it is.
    let by_name = file
        .to_str()
        .filter(|name| !file.exists() && !name.contains('/') && !name.ends_with(".wasm"));
    let oci = file
        .to_str()
        .filter(|text| text.starts_with(shiphat_workflow::OCI_SCHEME));
    let file = match (oci, by_name) {
        (Some(text), _) => {
            let r = shiphat_workflow::OciRef::parse(text).map_err(Invalid)?;
            let fetched = engine
                .registry()?
                .fetch(&r)
                .await
                .map_err(|e| Invalid(e.to_string()))?;
            fetched.path
        }
        (None, Some(name)) => {
            let uses = shiphat_workflow::PluginRef::Name {
                name: name.to_owned(),
                sha256: None,
            };
            runner.plugin_path().resolve(&uses).map_err(Invalid)?.0
        }
        (None, None) => file.to_owned(),
    };
    let plugin = host
        .load(&file, None, shiphat_workflow::DEFAULT_STACK)
        .map_err(|e| Invalid(e.to_string()))?;
    let info = host
        .describe(&plugin)
        .await
        .map_err(|e| Invalid(e.to_string()))?;
    let (imports, exports) = plugin.interface(host);
    let schema: serde_json::Value = serde_json::from_str(&info.config_schema)
        .context("the plugin's config-schema is not JSON")?;
    if json {
        let value = serde_json::json!({
            "name": info.name,
            "version": info.version,
            "description": info.description,
            "sha256": plugin.digest(),
            "config_schema": schema,
            "imports": imports,
            "exports": exports,
        });
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        output::inspect(&info, &plugin.digest(), &schema, &imports, &exports);
    }
    Ok(exit::OK)
}

/// Keeps the sink type in one place for both output modes.
pub(crate) type Sink = Arc<dyn Fn(shiphat_runner::Event) + Send + Sync>;
