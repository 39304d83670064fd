//! `shiphat plugin new` and `shiphat plugin test`: the plugin author's loop.
//!
//! `new` writes a skeleton that builds as it is, in Rust, Python or JavaScript: the source, the
//! WIT contract (embedded in this binary, so the skeleton matches the engine that made it), a
//! README and a one-step workflow that runs it. `test` runs one step of a plugin file outside
//! any workflow file and prints the result, the outputs and the logs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use serde_json::{Map, Value, json};
use shiphat_runner::{Event, RunOptions, StepStatus};
use tokio_util::sync::CancellationToken;

use crate::{EngineArgs, Invalid, exit};

/// The contract, as this binary was built with it.
const WIT: &[(&str, &str)] = &[
    ("shiphat.wit", include_str!("../../../wit/shiphat.wit")),
    ("deps/cli.wit", include_str!("../../../wit/deps/cli.wit")),
    (
        "deps/clocks.wit",
        include_str!("../../../wit/deps/clocks.wit"),
    ),
    (
        "deps/filesystem.wit",
        include_str!("../../../wit/deps/filesystem.wit"),
    ),
    ("deps/http.wit", include_str!("../../../wit/deps/http.wit")),
    ("deps/io.wit", include_str!("../../../wit/deps/io.wit")),
    (
        "deps/random.wit",
        include_str!("../../../wit/deps/random.wit"),
    ),
    (
        "deps/sockets.wit",
        include_str!("../../../wit/deps/sockets.wit"),
    ),
];

const RUST: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../templates/rust/Cargo.toml")),
    ("src/lib.rs", include_str!("../templates/rust/src/lib.rs")),
];
const PYTHON: &[(&str, &str)] = &[("app.py", include_str!("../templates/python/app.py"))];
const JS: &[(&str, &str)] = &[
    ("plugin.js", include_str!("../templates/js/plugin.js")),
    ("build.mjs", include_str!("../templates/js/build.mjs")),
    ("package.json", include_str!("../templates/js/package.json")),
];

/// The language of a new plugin.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

#[derive(clap::Args)]
pub struct NewArgs {
    /// The language: rust, python or js.
    #[arg(long)]
    lang: Lang,
    /// The plugin's name: lowercase letters, digits and dashes, e.g. `notify-chat`.
    name: String,
    /// Where to write it [default: ./NAME]. Must not exist, or be empty.
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TestArgs {
    /// The plugin component (.wasm).
    file: PathBuf,
    /// The step's `with:` block, as a JSON object.
    #[arg(long = "with", value_name = "JSON", default_value = "{}")]
    with: String,
    /// A directory the plugin may read, as `allow.read`; repeat for several.
    #[arg(long = "allow-read", value_name = "DIR")]
    read: Vec<String>,
    /// A directory the plugin may write, as `allow.write`; repeat for several.
    #[arg(long = "allow-write", value_name = "DIR")]
    write: Vec<String>,
    /// A host pattern the plugin may send HTTP requests to, as `allow.http`; repeat for several.
    #[arg(long = "allow-http", value_name = "HOST")]
    http: Vec<String>,
    /// An environment variable the plugin sees, as `allow.env`; repeat for several.
    #[arg(long = "allow-env", value_name = "K=V")]
    env: Vec<String>,
    /// A secret the plugin may read, as `allow.secrets` (values from --secrets-file or the
    /// environment); repeat for several.
    #[arg(long = "secret", value_name = "NAME")]
    secrets: Vec<String>,
    /// Ask the plugin to report what it would do and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The step's timeout, e.g. `30s` [default: 10m].
    #[arg(long, value_name = "DURATION")]
    timeout: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

/// `shiphat plugin new`.
pub fn new(args: &NewArgs) -> anyhow::Result<u8> {
    let name = &args.name;
    let valid = !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(Invalid(format!(
            "plugin name `{name}` must start with a lowercase letter and hold only lowercase letters, digits and `-`, e.g. `notify-chat`"
        ))
        .into());
    }
    let dir = args.dir.clone().unwrap_or_else(|| PathBuf::from(name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Invalid(format!(
            "`{}` already exists and is not empty; pick another directory",
            dir.display()
        ))
        .into());
    }
    let crate_name = name.replace('-', "_");
    let (files, wasm, build) = match args.lang {
        Lang::Rust => (
            RUST,
            format!("target/wasm32-wasip2/release/{crate_name}.wasm"),
            "rustup target add wasm32-wasip2   # once\ncargo build --release --target wasm32-wasip2"
                .to_string(),
        ),
        Lang::Python => (
            PYTHON,
            format!("{name}.wasm"),
            format!(
                "pip install componentize-py==0.25.1   # once, best in a virtualenv\ncomponentize-py -d wit -w step componentize app -o {name}.wasm"
            ),
        ),
        Lang::Js => (
            JS,
            format!("{name}.wasm"),
            "npm install   # once: componentize-js 0.23.0\nnode build.mjs".to_string(),
        ),
    };
    let fill = |text: &str| text.replace("{{name}}", name);
    let mut written = Vec::new();
    for (path, text) in files {
        write(&dir.join(path), &fill(text))?;
        written.push(path.to_string());
    }
    for (path, text) in WIT {
        write(&dir.join("wit").join(path), text)?;
        written.push(format!("wit/{path}"));
    }
    let workflow = format!(
        "# Runs the plugin once: `shiphat run workflow.yaml` after building it.\nname: try-{name}\nsteps:\n  - id: {name}\n    uses: ./{wasm}\n    with: {{ name: shiphat }}\n"
    );
    write(&dir.join("workflow.yaml"), &workflow)?;
    let readme = format!(
        "# {name}\n\nA shiphat plugin: a WebAssembly component that exports the `step` world of\n`wit/shiphat.wit` (the contract, copied here by `shiphat plugin new`).\n\n## Build\n\n```sh\n{build}\n```\n\nThe component is `{wasm}`.\n\n## Run\n\n```sh\nshiphat plugin test {wasm} --with '{{\"name\":\"you\"}}'   # one step, no workflow\nshiphat run workflow.yaml                               # the one-step workflow\n```\n\nA plugin reaches nothing its step's `allow:` does not grant. The guide is\n`docs/plugin-guide.md` in shiphat's repository.\n"
    );
    write(&dir.join("README.md"), &readme)?;
    let ignore = match args.lang {
        Lang::Rust => "/target\nCargo.lock\n",
        Lang::Python => "*.wasm\n__pycache__/\n",
        Lang::Js => "*.wasm\nnode_modules/\npackage-lock.json\n",
    };
    write(&dir.join(".gitignore"), ignore)?;
    crate::output::note(&format!(
        "wrote a {:?} plugin `{name}` to {} ({} files); build it with:\n  cd {}\n  {}",
        args.lang,
        dir.display(),
        written.len() + 3,
        dir.display(),
        build.replace('\n', "\n  ")
    ));
    Ok(exit::OK)
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))
}

/// Problems found in the workflow that `plugin test` built from its flags, told against the
/// flags the user typed: there is no file, so `plugin-test.yaml:1:189` would point nowhere.
fn flag_problems(diagnostics: &[shiphat_workflow::Diagnostic]) -> Invalid {
    const FLAGS: [(&str, &str); 8] = [
        ("`with", "--with"),
        ("allow.read", "--allow-read"),
        ("allow.write", "--allow-write"),
        ("allow.http", "--allow-http"),
        ("host pattern", "--allow-http"),
        ("allow.env", "--allow-env"),
        ("secret", "--secret"),
        ("timeout", "--timeout"),
    ];
    let lines: Vec<String> = diagnostics
        .iter()
        .map(|d| {
            let message = d
                .message
                .strip_prefix("step `test`: ")
                .unwrap_or(&d.message);
            let flag = FLAGS
                .iter()
                .find(|(needle, _)| message.contains(needle))
                .map_or("the plugin", |(_, flag)| flag);
            format!("{flag}: {message}")
        })
        .collect();
    Invalid(lines.join("\n"))
}

/// `shiphat plugin test`: builds a one-step workflow in memory from the flags, so grants,
/// secrets, limits and schema checks are exactly those of `shiphat run`, and runs it.
pub async fn test(args: &TestArgs) -> anyhow::Result<u8> {
    let with: Value = serde_json::from_str(&args.with)
        .map_err(|e| Invalid(format!("--with `{}` is not JSON: {e}", args.with)))?;
    if !with.is_object() {
        return Err(Invalid(format!(
            "--with `{}` must be a JSON object, e.g. '{{\"key\":\"value\"}}'",
            args.with
        ))
        .into());
    }
    let file = std::path::absolute(&args.file)
        .with_context(|| format!("cannot resolve `{}`", args.file.display()))?;
    if !file.is_file() {
        return Err(Invalid(format!("plugin file `{}` does not exist", file.display())).into());
    }
    let mut env = Map::new();
    for pair in &args.env {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| Invalid(format!("--allow-env `{pair}` must be K=V")))?;
        env.insert(k.to_string(), Value::String(v.to_string()));
    }
    let mut step = json!({
        "id": "test",
        "uses": file.to_string_lossy(),
        "with": with,
        "allow": {
            "read": args.read,
            "write": args.write,
            "http": args.http,
            "env": env,
            "secrets": args.secrets,
        },
    });
    if let Some(timeout) = &args.timeout {
        step["timeout"] = Value::String(timeout.clone());
    }
    // JSON is YAML; relative grants resolve against the current directory, as if the
    // workflow file were there.
    let text = serde_json::to_string(&json!({ "name": "plugin-test", "steps": [step] }))?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let workflow = match shiphat_workflow::parse(&text, &cwd.join("plugin-test.yaml")) {
        Ok(workflow) => workflow,
        Err(shiphat_workflow::Error::Invalid(diagnostics)) => {
            return Err(flag_problems(&diagnostics.0).into());
        }
        Err(e) => return Err(e.into()),
    };

    let runner = args.engine.runner()?;
    let started = Instant::now();
    let prepared = match runner.prepare(workflow).await {
        Ok(prepared) => prepared,
        Err(shiphat_runner::Error::Invalid(diagnostics)) => {
            return Err(flag_problems(&diagnostics).into());
        }
    };
    let load_time = started.elapsed();
    let (_, plugin, info) = prepared.plugins().next().context("the step's plugin")?;
    let load = match plugin.load {
        shiphat_host::LoadKind::Compiled => "compiled",
        shiphat_host::LoadKind::Cached => "cached",
    };
    let info = info.clone();

    let logs = Arc::new(Mutex::new(Vec::new()));
    let collect = logs.clone();
    let sink: shiphat_runner::EventSink = Arc::new(move |event| {
        if let Event::Log {
            level,
            source,
            message,
            ..
        } = event
        {
            collect
                .lock()
                .unwrap()
                .push(json!({ "level": level, "source": source, "message": message }));
        }
    });
    let options = RunOptions {
        run_id: shiphat_runner::new_run_id(),
        inputs: Map::new(),
        dry_run: args.dry_run,
    };
    let started = Instant::now();
    let report = runner
        .run(&prepared, options, sink, CancellationToken::new())
        .await;
    let run_time = started.elapsed();
    let step = report
        .steps
        .into_iter()
        .find(|s| s.id == "test")
        .context("the run reported no step")?;
    let logs = std::mem::take(&mut *logs.lock().unwrap());
    let succeeded = step.status == StepStatus::Succeeded;
    if args.json {
        let value = json!({
            "plugin": { "name": info.name, "version": info.version },
            "status": step.status,
            "summary": step.summary,
            "error": step.error,
            "outputs": step.outputs,
            "logs": logs,
            "load": load,
            "load_ms": load_time.as_secs_f64() * 1000.0,
            "run_ms": run_time.as_secs_f64() * 1000.0,
        });
        outln!("{}", serde_json::to_string(&value)?);
    } else {
        outln!(
            "{} {} {}  ({} in {}, ran in {})",
            if succeeded { "✓" } else { "✗" },
            info.name,
            info.version,
            load,
            shiphat_host::fmt_duration(load_time),
            shiphat_host::fmt_duration(run_time)
        );
        match &step.error {
            None => outln!("result: succeeded: {}", step.summary),
            Some(e) => outln!(
                "result: {}: {}",
                serde_json::to_value(e.kind)?.as_str().unwrap_or("failed"),
                e.message
            ),
        }
        outln!(
            "outputs: {}",
            serde_json::to_string_pretty(&Value::Object(step.outputs))?
        );
        outln!("logs:");
        for line in &logs {
            outln!(
                "  [{}] {}",
                line["level"].as_str().unwrap_or(""),
                line["message"].as_str().unwrap_or("")
            );
        }
    }
    Ok(if succeeded { exit::OK } else { exit::FAILED })
}
