//! shiphat's engine benchmarks: what the engine itself costs, measured on real components.
//!
//! `cargo run --release -p shiphat-bench` (or `bench/run.sh`) prints a Markdown table.
//! `--quick` runs every measurement once with tiny sizes: the smoke test uses it so the
//! benchmarks cannot rot.
//! `--per-step` runs only the in-process per-step overhead, the figure to profile (see
//! `--help`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

mod side;
use shiphat_host::{Host, HostConfig, LoadKind};
use shiphat_runner::{PluginPath, Prepared, RunOptions, RunOutcome, Runner, Secrets};
use tokio_util::sync::CancellationToken;

struct Sizes {
    /// Warm in-process runs of a one-step workflow.
    single_runs: usize,
    /// Steps in the sequential chains measured for time per step.
    chains: &'static [usize],
    /// Steps in the workflow whose load and validation is timed.
    big_workflow: usize,
    /// Repetitions of each one-shot CLI measurement.
    cli_runs: usize,
    /// Rounds of the side-by-side deploy (each tool once per round).
    rounds: usize,
}

const FULL: Sizes = Sizes {
    single_runs: 2000,
    chains: &[1, 10, 100, 1000],
    big_workflow: 1000,
    cli_runs: 40,
    rounds: 15,
};
const QUICK: Sizes = Sizes {
    single_runs: 5,
    chains: &[1, 3],
    big_workflow: 10,
    cli_runs: 2,
    rounds: 1,
};

const USAGE: &str = "\
usage: shiphat-bench [--quick] [--per-step] [--runs N] [--rounds N] [--ansible PATH]

  --quick         every measurement once, with tiny sizes (what the smoke test runs)
  --per-step      only the per-step overhead, warm and in process: a one-step no-op run
                  through the whole runner, N times after 10 warm-up runs (p50 and p99);
                  the figure to profile, e.g. under `valgrind --tool=callgrind`
  --runs N        how many runs the per-step overhead is measured over (default 2000)
  --rounds N      rounds of the side-by-side deploy (default 15)
  --ansible PATH  the ansible-playbook to compare with (the deploy skips Ansible without it)
";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return Ok(());
    }
    let quick = args.iter().any(|a| a == "--quick");
    let per_step_only = args.iter().any(|a| a == "--per-step");
    let sizes = if quick { &QUICK } else { &FULL };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned();
    let plugins = root.join("plugins/target/wasm32-wasip2/release");
    if !plugins.join("noop.wasm").is_file() {
        bail!("the plugins are not built: run `cargo xtask plugins` (bench/run.sh does it)");
    }
    let work = tempfile::tempdir()?;
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let ansible = value_of("--ansible").map(PathBuf::from);
    let rounds = match value_of("--rounds") {
        Some(n) => n.parse().context("--rounds takes a whole number")?,
        None => sizes.rounds,
    };
    let single_runs = match value_of("--runs") {
        Some(n) => n.parse().context("--runs takes a whole number")?,
        None => sizes.single_runs,
    };
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    if per_step_only {
        let runner = runner(&plugins, work.path())?;
        let rows = runtime()?.block_on(per_step(&runner, work.path(), single_runs))?;
        print_table(&rows);
        return Ok(());
    }
    let mut rows = Vec::new();
    // First, while this process is still small: a child's peak memory as the kernel reports
    // it includes the memory of the process it was forked from.
    rows.extend(side::side_by_side(
        &root,
        &plugins,
        &shiphat_binary()?,
        ansible.as_deref(),
        rounds,
    )?);
    let runtime = runtime()?;
    let runner = runner(&plugins, work.path())?;
    rows.extend(runtime.block_on(per_step(&runner, work.path(), single_runs))?);
    rows.extend(runtime.block_on(chains(&runner, work.path(), sizes.chains))?);
    rows.extend(workflow_load(work.path(), sizes.big_workflow)?);
    rows.extend(expressions()?);
    rows.extend(compile_cache(&plugins, work.path())?);
    rows.extend(one_shot(&plugins, work.path(), sizes.cli_runs)?);
    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[Row]) {
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    for (what, value, target) in rows {
        println!("| {what} | {value} | {target} |");
    }
}

type Row = (String, String, String);

fn row(what: impl Into<String>, value: impl Into<String>, target: impl Into<String>) -> Row {
    (what.into(), value.into(), target.into())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn chain_yaml(steps: usize) -> String {
    let mut yaml = String::from("name: chain\nsteps:\n");
    for i in 0..steps {
        yaml.push_str(&format!("  - id: s{i}\n    uses: noop\n"));
        if i > 0 {
            yaml.push_str(&format!("    needs: s{}\n", i - 1));
        }
    }
    yaml
}

/// A runner over the bundled plugins, with its compile cache in `work`, set up as the daemon's
/// is (with the instance pool).
fn runner(plugins: &Path, work: &Path) -> Result<Runner> {
    let host = Host::new(HostConfig {
        cache_dir: Some(work.join("cache")),
        instance_pool: true,
        ..Default::default()
    })?;
    Ok(Runner::new(
        host,
        PluginPath::new(vec![plugins.to_owned()]),
        Secrets::none(),
    ))
}

/// Per-step engine overhead, warm and in process: a one-step no-op workflow run `runs` times
/// through the whole runner.
async fn per_step(runner: &Runner, work: &Path, runs: usize) -> Result<Vec<Row>> {
    let prepared = prepare_chain(runner, work, 1).await?;
    let mut times = Vec::with_capacity(runs + 10);
    for _ in 0..runs.max(1) + 10 {
        times.push(timed_run(runner, &prepared).await);
    }
    // The first runs warm caches and the allocator; they are not what a warm engine costs.
    let mut times = times.split_off(10);
    times.sort();
    Ok(vec![
        row(
            "per-step overhead, warm, in process (p50)",
            us(percentile(&times, 0.5)),
            "≤ 50 µs",
        ),
        row(
            "per-step overhead, warm, in process (p99)",
            us(percentile(&times, 0.99)),
            "",
        ),
    ])
}

/// Time per step of chains of no-op steps, the best of three runs each: it should stay flat
/// as the chain grows.
async fn chains(runner: &Runner, work: &Path, lengths: &[usize]) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &steps in lengths {
        let prepared = prepare_chain(runner, work, steps).await?;
        let mut best = Duration::MAX;
        for _ in 0..3 {
            best = best.min(timed_run(runner, &prepared).await);
        }
        rows.push(row(
            format!("time per step, chain of {steps} no-op steps"),
            us(best / steps as u32),
            "flat",
        ));
    }
    Ok(rows)
}

/// A chain of `steps` no-op steps, written to `work` and prepared.
async fn prepare_chain(runner: &Runner, work: &Path, steps: usize) -> Result<Prepared> {
    let file = work.join(format!("chain-{steps}.yaml"));
    std::fs::write(&file, chain_yaml(steps))?;
    Ok(runner.prepare(shiphat_workflow::load(&file)?).await?)
}

/// The wall time of one whole run of `prepared`, which must succeed.
async fn timed_run(runner: &Runner, prepared: &Prepared) -> Duration {
    let started = Instant::now();
    let report = runner
        .run(
            prepared,
            options(),
            Arc::new(|_| {}),
            CancellationToken::new(),
        )
        .await;
    let took = started.elapsed();
    assert_eq!(report.status, RunOutcome::Succeeded);
    took
}

fn options() -> RunOptions {
    RunOptions {
        run_id: shiphat_runner::new_run_id(),
        inputs: Default::default(),
        dry_run: false,
    }
}

/// Parsing and checking a large workflow file (plugins not involved).
fn workflow_load(work: &Path, steps: usize) -> Result<Vec<Row>> {
    let file = work.join("big.yaml");
    std::fs::write(&file, chain_yaml(steps))?;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        let workflow = shiphat_workflow::load(&file)?;
        best = best.min(started.elapsed());
        assert_eq!(workflow.steps.len(), steps);
    }
    Ok(vec![row(
        format!("load and validate a {steps}-step workflow"),
        ms(best),
        "",
    )])
}

/// Deciding a typical `if:` and resolving a typical `with:` value, over a run with a step of 50
/// outputs: what expressions add to each step.
fn expressions() -> Result<Vec<Row>> {
    use shiphat_workflow::{Expr, Scope, Status, StepState, Template};
    let mut inputs = serde_json::Map::new();
    inputs.insert("environment".into(), "Production".into());
    inputs.insert("release".into(), "1.4.2".into());
    let mut outputs = serde_json::Map::new();
    for i in 0..50 {
        outputs.insert(format!("key{i}"), i.into());
    }
    outputs.insert("score".into(), "95".into());
    let steps = std::collections::BTreeMap::from([(
        "qa".to_string(),
        StepState {
            status: "succeeded".into(),
            outputs,
        },
    )]);
    let env = serde_json::Map::new();
    let scope = Scope {
        inputs: &inputs,
        env: &env,
        steps: &steps,
        run_id: "01run",
        dry_run: false,
    };
    let status = Status {
        success: true,
        failure: false,
        cancelled: false,
    };
    let condition = Expr::parse_condition(
        "inputs.environment == 'production' && steps.qa.outputs.score >= 90 && !contains(inputs.release, '-rc')",
    )
    .map_err(anyhow::Error::msg)?;
    let template = Template::parse("web-${{ inputs.release }}-${{ format('{0}', run.id) }}")
        .map_err(anyhow::Error::msg)?;
    let time = |f: &dyn Fn() -> bool| {
        let mut times: Vec<Duration> = (0..2_000)
            .map(|_| {
                let started = Instant::now();
                assert!(f());
                started.elapsed()
            })
            .collect();
        times.sort();
        percentile(&times, 0.5)
    };
    let decide = time(&|| condition.eval_if(&scope, status).unwrap_or(false));
    let resolve = time(&|| template.eval(&scope).is_ok());
    Ok(vec![
        row("decide a three-clause `if:` (p50)", us(decide), ""),
        row(
            "resolve a `with:` value with two expressions (p50)",
            us(resolve),
            "",
        ),
    ])
}

/// Loading each bundled plugin: compiled (cache miss) and read back (cache hit).
fn compile_cache(plugins: &Path, work: &Path) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(plugins)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .collect();
    files.sort();
    for file in files {
        let cache = work.join(format!(
            "cache-{}",
            file.file_stem().unwrap().to_string_lossy()
        ));
        let miss = {
            let host = Host::new(HostConfig {
                cache_dir: Some(cache.clone()),
                ..Default::default()
            })?;
            let started = Instant::now();
            let plugin = host.load(&file, None, shiphat_workflow::DEFAULT_STACK)?;
            assert_eq!(plugin.load, LoadKind::Compiled);
            started.elapsed()
        };
        let hit = {
            let host = Host::new(HostConfig {
                cache_dir: Some(cache),
                ..Default::default()
            })?;
            let started = Instant::now();
            let plugin = host.load(&file, None, shiphat_workflow::DEFAULT_STACK)?;
            assert_eq!(plugin.load, LoadKind::Cached);
            started.elapsed()
        };
        let size = std::fs::metadata(&file)?.len();
        rows.push(row(
            format!(
                "load {} ({} KiB): cache miss / hit",
                file.file_name().unwrap().to_string_lossy(),
                size / 1024
            ),
            format!("{} / {}", ms(miss), ms(hit)),
            "",
        ));
    }
    Ok(rows)
}

/// `shiphat run` of a three-step no-op workflow as a fresh process, cold and warm.
/// The `shiphat` binary built beside this one.
fn shiphat_binary() -> Result<PathBuf> {
    let shiphat = std::env::current_exe()?.parent().unwrap().join("shiphat");
    if !shiphat.is_file() {
        bail!(
            "`{}` is missing: build it with `cargo build --release -p shiphat`",
            shiphat.display()
        );
    }
    Ok(shiphat)
}

fn one_shot(plugins: &Path, work: &Path, runs: usize) -> Result<Vec<Row>> {
    let shiphat = shiphat_binary()?;
    let file = work.join("three.yaml");
    std::fs::write(
        &file,
        "name: three\nsteps:\n  - id: a\n    uses: noop\n  - id: b\n    uses: noop\n    needs: a\n  - id: c\n    uses: noop\n    needs: b\n",
    )?;
    let run = |cache: &Path| -> Result<Duration> {
        let started = Instant::now();
        let output = Command::new(&shiphat)
            .arg("run")
            .arg(&file)
            .arg("--plugin-path")
            .arg(plugins)
            .env("SHIPHAT_CACHE_DIR", cache)
            .output()
            .context("running shiphat")?;
        let took = started.elapsed();
        if !output.status.success() {
            bail!(
                "shiphat failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(took)
    };
    let mut cold = Vec::new();
    for i in 0..runs {
        cold.push(run(&work.join(format!("cold-cache-{i}")))?);
    }
    let warm_cache = work.join("warm-cache");
    run(&warm_cache)?;
    let mut warm = Vec::new();
    for _ in 0..runs {
        warm.push(run(&warm_cache)?);
    }
    cold.sort();
    warm.sort();
    Ok(vec![
        row(
            "`shiphat run`, 3 no-op steps, cold cache (median)",
            ms(percentile(&cold, 0.5)),
            "",
        ),
        row(
            "`shiphat run`, 3 no-op steps, warm cache (median)",
            ms(percentile(&warm, 0.5)),
            "≤ 15 ms",
        ),
        row(
            "`shiphat run`, 3 no-op steps, warm cache (p90)",
            ms(percentile(&warm, 0.9)),
            "",
        ),
    ])
}
