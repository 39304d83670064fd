//! What the test suite needs beyond the Rust toolchain, installed on demand and pinned:
//!
//! - `prometheus` (tests/metrics.rs runs a real server), `postgresql` (the store's tests and
//!   tests/daemon.rs run a real server), `curl` (the benchmarks' shell baseline) and `strace`
//!   (tests/deployer.rs watches the deployer's fsyncs), from Debian's packages;
//! - `componentize-py` (tests/languages.rs builds the Python example), `ansible-core` (the
//!   benchmarks' smoke test) and `oras` (tests/oci.rs), in a virtual environment;
//! - `docker-registry` (tests/oci.rs runs a real registry), from Debian's packages;
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
/// The ORAS Python SDK: tests/oci.rs checks that `oras` pulls what shiphat pushes, and that
/// shiphat runs what `oras` pushes.
const ORAS: &str = "oras==0.2.43";
/// The Debian packages the tests need, each with a shell test of whether it is installed: its
/// program on the `PATH`, or, for PostgreSQL, whose server programs are not on it, `initdb` in
/// the folder of any version (engine/store/src/testing.rs takes the newest).
const DEBIAN: [(&str, &str); 6] = [
    ("prometheus", "command -v prometheus"),
    ("docker-registry", "command -v docker-registry"),
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
            "apt-get update failed (the tests need the Debian packages prometheus, docker-registry, postgresql, curl, chromium and strace)",
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
    // The pinned list is written beside the environment after `pip install` succeeds, and a
    // different list (a package added or bumped, as `oras` was) installs again.
    let pip_wants = [COMPONENTIZE_PY, ANSIBLE_CORE, ORAS];
    let wanted = pip_wants.join("\n") + "\n";
    let pip_installed = venv.join("installed-requirements.txt");
    if std::fs::read_to_string(&pip_installed).ok().as_deref() != Some(wanted.as_str()) {
        eprintln!(
            "xtask: installing {} into {}",
            pip_wants.join(", "),
            venv.display()
        );
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("cannot make a Python virtual environment (python3 -m venv)")?;
        run(Command::new(python_bin.join("pip"))
            .args(["install", "--quiet"])
            .args(pip_wants))
        .context(
            "pip install failed: the tests need componentize-py, ansible-core and oras from PyPI",
        )?;
        std::fs::write(&pip_installed, &wanted)?;
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
