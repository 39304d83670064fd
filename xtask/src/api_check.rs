//! `cargo xtask api-check`: the API checked against its own OpenAPI document by a tool no one
//! here wrote. Schemathesis (pinned, from PyPI, into a virtual environment under the target
//! directory) runs with all of its checks, its stateful phase included, against a real
//! `shiphat serve` on a free loopback port with a data directory of its own and an admin
//! token made for the occasion. It is not part of `cargo xtask test`: it takes minutes and
//! explores at random, so it is run by hand when the API changes (docs/daemon.md).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, root, run};

const SCHEMATHESIS: &str = "schemathesis==4.32.5";
/// The workflow of the document's example run (`POST /api/v1/runs`).
const WORKFLOW: &str = "\
name: api-check
inputs:
  environment: { type: choice, choices: [staging, production], default: staging }
concurrency: \"api-check-${{ inputs.environment }}\"
steps:
  - id: noop
    uses: noop
";
/// The route of every run's changes, as Server-Sent Events without end.
const FEED: &str = "/api/v1/events";
/// How long one request may take, in seconds: the daemon answers in milliseconds.
const REQUEST_TIMEOUT: &str = "10";
/// How long the daemon may take to listen: it loads no workflow, so a second is plenty; a
/// minute only passes when something is wrong.
const LISTEN_WITHIN: Duration = Duration::from_secs(60);

/// Ends the daemon however the check ends.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run_check(args: &[String]) -> Result<()> {
    run(cargo().current_dir(root()).args(["build", "-p", "shiphat"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let shiphat = target.join("debug/shiphat");

    let venv = target.join("api-check/venv");
    let schemathesis = venv.join("bin/schemathesis");
    let pinned = venv.join("installed");
    if std::fs::read_to_string(&pinned).ok().as_deref() != Some(SCHEMATHESIS) {
        eprintln!("xtask: installing {SCHEMATHESIS} into {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot make a Python virtual environment (python3 -m venv)")?;
        run(Command::new(venv.join("bin/pip")).args(["install", "--quiet", SCHEMATHESIS]))
            .context("pip install failed: api-check needs schemathesis from PyPI")?;
        std::fs::write(&pinned, SCHEMATHESIS)?;
    }

    let data = tempfile::tempdir()?;
    let token = crate::admin_token(&shiphat, "api-check", data.path())?;
    // A free port: bound by the system, released, then handed to the daemon.
    let listen = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    // One workflow, so that the runs the document's example starts give the run routes
    // something to show, follow, cancel and resume; its plugin is built from this tree.
    crate::plugins()?;
    let workflows = data.path().join("workflows");
    std::fs::create_dir_all(&workflows)?;
    std::fs::write(workflows.join("api-check.yaml"), WORKFLOW)?;
    let _daemon = Daemon(
        Command::new(&shiphat)
            .args(["serve", "--listen", &listen.to_string(), "--data-dir"])
            .arg(data.path())
            .arg("--workflows")
            .arg(&workflows)
            .spawn()
            .context("cannot start `shiphat serve`")?,
    );
    let started = Instant::now();
    while std::net::TcpStream::connect(listen).is_err() {
        if started.elapsed() > LISTEN_WITHIN {
            bail!("`shiphat serve` did not listen on {listen} within a minute");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let base = format!("http://{listen}");
    // Schemathesis keeps its state (`.schemathesis/`) in its working directory: the target
    // directory's, not the worktree's.
    let status = Command::new(&schemathesis)
        .current_dir(target.join("api-check"))
        .arg("--config-file")
        .arg(root().join("xtask/schemathesis.toml"))
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--url", &base, "--checks", "all", "--header"])
        .arg(format!("Authorization: Bearer {token}"))
        // The feed is an event stream that ends only when its client goes, and Schemathesis
        // reads every answer to its end: it waited on the first one for ever. A run's event
        // stream ends with its run (and this daemon has none), so it stays in.
        .args(["--exclude-path", FEED])
        // A safety net: an answer that never ends is a failure to see, not a silent stall.
        .args(["--request-timeout", REQUEST_TIMEOUT])
        .args(args)
        .status()
        .context("cannot run schemathesis")?;
    if !status.success() {
        bail!("schemathesis found failures (above)");
    }
    Ok(())
}
