//! What the test suite needs beyond the Rust toolchain, installed on demand and pinned:
//!
//! - `prometheus` (tests/metrics.rs runs a real server), `postgresql` (the store's tests and
//!   tests/daemon.rs run a real server), `curl` (the benchmarks' shell baseline) and `strace`
//!   (tests/deployer.rs watches the deployer's fsyncs), from Debian's packages;
//! - `componentize-py` (tests/languages.rs builds the Python example) and `ansible-core` (the
//!   benchmarks' smoke test), each in a virtual environment;
//! - `componentize-js` (the JavaScript example), from the npm registry;
//! - `chromium` from Debian's packages and `playwright-core` from the npm registry, which
//!   drives it (tests/web.rs runs the web page in a real headless browser), and `axe-core`
//!   from the npm registry, which audits every page state the browser test visits.
//!
//! The npm packages are pinned, with everything they pull in, by `xtask/js/package-lock.json`.
//!
//! Everything lands under `target/test-tools` (or `$SHIPHAT_TEST_TOOLS`), so a second run
//! installs nothing.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::run;

const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
const ANSIBLE_CORE: &str = "ansible-core==2.17.7";
/// The Debian packages the tests need, each with a shell test of whether it is installed: its
/// program on the `PATH`, or, for PostgreSQL, whose server programs are not on it, `initdb` in
/// the folder of any version (engine/store/src/testing.rs takes the newest).
const DEBIAN: [(&str, &str); 5] = [
    ("prometheus", "command -v prometheus"),
    ("curl", "command -v curl"),
    ("chromium", "command -v chromium"),
    ("strace", "command -v strace"),
    ("postgresql", "ls /usr/lib/postgresql/*/bin/initdb"),
];

/// Where the tools are, to hand to the test run.
pub struct Tools {
    python_bin: PathBuf,
    js: PathBuf,
    ansible: PathBuf,
}

impl Tools {
    pub fn apply(&self, command: &mut Command) {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![self.python_bin.clone()];
        dirs.extend(std::env::split_paths(&path));
        command
            .env(
                "PATH",
                std::env::join_paths(dirs).expect("paths without separators"),
            )
            .env("SHIPHAT_JS_TOOLS", &self.js)
            .env(
                "SHIPHAT_PLAYWRIGHT",
                self.js.join("node_modules/playwright-core"),
            )
            .env("SHIPHAT_AXE", self.js.join("node_modules/axe-core"))
            .env("SHIPHAT_BENCH_ANSIBLE", &self.ansible);
    }
}

/// Whether the shell command `test` succeeds.
fn holds(test: &str) -> bool {
    Command::new("sh")
        .args(["-c", test])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn ensure() -> Result<Tools> {
    let missing: Vec<&str> = DEBIAN
        .into_iter()
        .filter(|(_, installed)| !holds(installed))
        .map(|(package, _)| package)
        .collect();
    if !missing.is_empty() {
        if !holds("command -v apt-get") {
            bail!(
                "the tests need {} (Debian packages); install them and run again",
                missing.join(" and ")
            );
        }
        eprintln!("xtask: installing {} with apt-get", missing.join(", "));
        run(Command::new("apt-get").arg("update").arg("-qq")).context(
            "apt-get update failed (the tests need the Debian packages prometheus, postgresql, curl, chromium and strace)",
        )?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("cannot install {} with apt-get", missing.join(" ")))?;
    }

    let dir = std::env::var_os("SHIPHAT_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::root().join("target/test-tools"));
    let venv = dir.join("venv");
    let python_bin = venv.join("bin");
    let pip_wants = [
        (COMPONENTIZE_PY, "componentize-py"),
        (ANSIBLE_CORE, "ansible-playbook"),
    ];
    if pip_wants
        .iter()
        .any(|(_, exe)| !python_bin.join(exe).is_file())
    {
        eprintln!(
            "xtask: installing {COMPONENTIZE_PY} and {ANSIBLE_CORE} into {}",
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot make a Python virtual environment (python3 -m venv)")?;
        run(Command::new(python_bin.join("pip"))
            .args(["install", "--quiet"])
            .args(pip_wants.map(|(p, _)| p)))
        .context("pip install failed: the tests need componentize-py and ansible-core from PyPI")?;
    }

    // The npm packages come from xtask/js: exact versions, and a lock file for everything they
    // pull in. A caret range deep in componentize-js's tree once resolved to a set that lacks
    // a module it imports; `npm ci` installs exactly what the lock says, every time.
    let js = dir.join("js");
    let pinned = crate::root().join("xtask/js");
    let lock = std::fs::read(pinned.join("package-lock.json"))
        .context("xtask/js/package-lock.json is missing")?;
    // Written only after `npm ci` succeeds, so an install cut short is redone next time, and
    // it is the whole lock file: a package added to the lock (axe-core was) is installed into
    // an existing tools folder on the next run.
    let installed = js.join("installed-package-lock.json");
    if std::fs::read(&installed).ok().as_ref() != Some(&lock) {
        eprintln!(
            "xtask: installing componentize-js, playwright-core and axe-core (xtask/js/package-lock.json) into {}",
            js.display()
        );
        std::fs::create_dir_all(&js)?;
        for file in ["package.json", "package-lock.json"] {
            std::fs::copy(pinned.join(file), js.join(file))
                .with_context(|| format!("cannot copy xtask/js/{file}"))?;
        }
        run(Command::new("npm")
            .current_dir(&js)
            .args(["ci", "--no-audit", "--no-fund"]))
        .context(
            "npm ci failed: the tests need componentize-js, playwright-core and axe-core from the npm registry",
        )?;
        std::fs::write(&installed, &lock)?;
    }
    Ok(Tools {
        ansible: python_bin.join("ansible-playbook"),
        python_bin,
        js,
    })
}
