//! shiphat's development tasks, as code rather than tribal knowledge.
//!
//! `cargo xtask demo` builds everything a fresh clone needs and runs the demo workflow;
//! `cargo xtask test` builds the plugins and runs the whole test suite. Both add the
//! `wasm32-wasip2` target first when it is missing. `cargo xtask expr-conformance DIR` measures
//! shiphat's expressions against GitHub's own test data.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

mod api_check;
mod demo;
mod expr_conformance;
mod tools;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo      build the engine and the plugins, prepare a demo target, deploy release 2 with
            workflows/deploy.yaml (`demo --bad`: a release whose metrics breach, rolled back;
            `demo --inconclusive`: metrics neither good nor bad, a person approves or rejects;
            `demo --serve`: the daemon and its web page on http://127.0.0.1:7300/ instead)
  test      build the plugins, install what the tests need (prometheus, docker-registry,
            postgresql, curl, strace, chromium from Debian, componentize-py, ansible-core
            and oras from PyPI,
            componentize-js, playwright-core and axe-core from npm; pinned, into
            target/test-tools), then run every test
            (cargo test --workspace, then the plugins' own tests natively, on the host);
            screenshots of the web page land in artifacts/screenshots
  plugins   build the plugins into plugins/target/wasm32-wasip2/release
  lint      cargo fmt --check and cargo clippy -D warnings, for host and plugins
  api-check [ARG...]
            run Schemathesis (pinned, into target/api-check) with all its checks against a
            live `shiphat serve` on a loopback port; ARGs go to `schemathesis run`
  expr-conformance DIR [NAME...]
            run GitHub's expression test data (the JSON files of actions/languageservices
            expressions/testdata, in DIR; only those whose names contain a NAME, if given)
            through the shiphat binary, each case as a step's output and as its `if:`;
            print the agreement per file and every disagreement, and fail if any disagrees";

/// The target plugins are built for: WASI preview 2, which rustc emits as a component.
const WASM_TARGET: &str = "wasm32-wasip2";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("demo") => demo(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("plugins") => plugins(),
        Some("lint") => lint(),
        Some("expr-conformance") => expr_conformance::run(&args[1..]),
        Some("api-check") => api_check::run_check(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task `{other}`\n\n{USAGE}"),
    }
}

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace root")
        .to_owned()
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub(crate) fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}

/// Adds the wasm target through rustup when the toolchain lacks it.
fn ensure_wasm_target() -> Result<()> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("cannot run rustc")?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    eprintln!("xtask: adding the {WASM_TARGET} target with rustup");
    run(Command::new("rustup").args(["target", "add", WASM_TARGET]))
        .with_context(|| format!("the {WASM_TARGET} target is needed to build plugins; install rustup or add the target by hand"))
}

pub(crate) fn plugins() -> Result<()> {
    ensure_wasm_target()?;
    let root = root();
    // The plugins always land in plugins/target, whatever CARGO_TARGET_DIR says: that is
    // where the engine's default plugin path looks.
    run(cargo()
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "build",
            "--release",
            "--target",
            WASM_TARGET,
            "--manifest-path",
        ])
        .arg(root.join("plugins/Cargo.toml"))
        .arg("--target-dir")
        .arg(root.join("plugins/target")))
}

fn demo(args: &[String]) -> Result<()> {
    let bad = args.iter().any(|a| a == "--bad");
    let inconclusive = args.iter().any(|a| a == "--inconclusive");
    plugins()?;
    run(cargo()
        .current_dir(root())
        .args(["build", "--package", "shiphat"]))?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let shiphat = target_dir.join("debug/shiphat");
    let workflow = root().join("workflows/deploy.yaml");
    let demo = demo::Demo::prepare(&root().join("workflows/.demo"))?;
    let metrics_url = format!("http://{}/metrics", demo.metrics_addr);
    let deploy = |release: &str, quiet: bool| -> Result<i32> {
        let mut command = Command::new(&shiphat);
        command
            .arg("run")
            .arg(&workflow)
            .args(["--input", &format!("release={release}")])
            .args(["--input", &format!("metrics_url={metrics_url}")]);
        // On a terminal the person running the demo answers the approval; without one (a
        // script, CI) it is approved in advance, so the path still shows end to end.
        if release == demo::INCONCLUSIVE_RELEASE && !std::io::stdin().is_terminal() {
            command.args(["--approve", "decide"]);
        }
        if quiet {
            command.arg("--json").stdout(std::process::Stdio::null());
        }
        Ok(command.status()?.code().unwrap_or(3))
    };
    eprintln!(
        "xtask: preparing the demo in workflows/.demo: a sample site, a JUnit report, an app serving {metrics_url}; release 1 is deployed first"
    );
    if args.iter().any(|a| a == "--serve") {
        return serve_demo(&shiphat, &demo);
    }
    if deploy("1", true)? != 0 {
        bail!("deploying release 1 to prepare the demo failed; run it by hand to see why");
    }
    let release = if bad {
        demo::BAD_RELEASE
    } else if inconclusive {
        demo::INCONCLUSIVE_RELEASE
    } else {
        "2"
    };
    eprintln!("xtask: deploying release {release} over release 1\n");
    let code = deploy(release, false)?;
    eprintln!(
        "\nxtask: workflows/.demo/www/current -> {}",
        demo.current()?
    );
    std::process::exit(code);
}

/// `cargo xtask demo --serve`: the daemon and its web page over the demo, with an admin
/// token made for the occasion, until Ctrl-C. The demo app keeps serving its metrics from
/// this process meanwhile.
fn serve_demo(shiphat: &std::path::Path, demo: &demo::Demo) -> Result<()> {
    let data = root().join("workflows/.demo/data");
    let listen = "127.0.0.1:7300";
    let token = admin_token(shiphat, "demo-admin", &data)?;
    if demo.metrics_addr.to_string() != demo::DEFAULT_METRICS {
        eprintln!(
            "xtask: {} was taken; give the deploy form `metrics_url` = http://{}/metrics",
            demo::DEFAULT_METRICS,
            demo.metrics_addr
        );
    }
    let mut daemon = Command::new(shiphat)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(&data)
        .arg("--workflows")
        .arg(root().join("workflows"))
        .spawn()
        .context("cannot start `shiphat serve`")?;
    // Release 1 goes through the daemon, so its history says what is deployed from the start.
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        if started.elapsed() > std::time::Duration::from_secs(60) {
            let _ = daemon.kill();
            bail!(
                "`shiphat serve` did not listen on {listen} within a minute (is the port taken?)"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let first = Command::new(shiphat)
        .args(["run", "deploy", "--input", "release=1", "--input"])
        .arg(format!("metrics_url=http://{}/metrics", demo.metrics_addr))
        .arg("--server")
        .arg(format!("http://{listen}"))
        .env("SHIPHAT_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .status()?;
    if !first.success() {
        let _ = daemon.kill();
        bail!("deploying release 1 through the daemon failed; see its log above");
    }
    eprintln!(
        "\nxtask: release 1 is deployed. Open http://{listen}/ and sign in with the token\n\n    {token}\n\nthen deploy release 2 (or 3, the bad one) from the Deploy page. Ctrl-C stops.\n"
    );
    let status = daemon.wait()?;
    std::process::exit(status.code().unwrap_or(0));
}

fn test(args: &[String]) -> Result<()> {
    plugins()?;
    let tools = tools::ensure()?;
    let mut command = cargo();
    command
        .current_dir(root())
        .args(["test", "--workspace"])
        .args(args);
    tools.apply(&mut command);
    run(&mut command)?;
    // The whole suite also runs the plugins' own tests (the property tests of JUnit reports,
    // the Prometheus format, conditions and tar entry names), natively: nothing runs tests
    // inside wasm32. A few seconds warm; a run picked with arguments (`--test daemon`) skips
    // them. The host build goes under CARGO_TARGET_DIR when it is set (CI keeps that one
    // between runs), else beside the wasm one in plugins/target, in its own subdirectory:
    // a directory apart from the engine's, so neither workspace's build evicts the other's.
    if args.is_empty() {
        let target_dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(|dir| PathBuf::from(dir).join("plugins-host"))
            .unwrap_or_else(|| root().join("plugins/target"));
        run(cargo()
            .env_remove("CARGO_TARGET_DIR")
            .args(["test", "--workspace", "--manifest-path"])
            .arg(root().join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(target_dir))?;
    }
    Ok(())
}

fn lint() -> Result<()> {
    let root = root();
    run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    run(cargo().current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    ensure_wasm_target()?;
    let manifest = root.join("plugins/Cargo.toml");
    run(cargo()
        .args(["fmt", "--all", "--check", "--manifest-path"])
        .arg(&manifest))?;
    run(cargo()
        .env_remove("CARGO_TARGET_DIR")
        .args([
            "clippy",
            "--release",
            "--target",
            WASM_TARGET,
            "--all-targets",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(root.join("plugins/target"))
        .args(["--", "-D", "warnings"]))
}

/// An admin token named `name` made with `shiphat token create` in the daemon data directory
/// `data`, for the tasks that start a daemon of their own (`demo --serve`, `api-check`).
pub(crate) fn admin_token(
    shiphat: &std::path::Path,
    name: &str,
    data: &std::path::Path,
) -> Result<String> {
    let created = Command::new(shiphat)
        .args(["token", "create", name, "--role", "admin", "--data-dir"])
        .arg(data)
        .output()
        .context("cannot run `shiphat token create`")?;
    if !created.status.success() {
        bail!(
            "`shiphat token create` failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
    }
    Ok(String::from_utf8(created.stdout)?.trim().to_owned())
}
