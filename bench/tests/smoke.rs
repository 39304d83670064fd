//! Runs every benchmark once with tiny sizes, so they cannot rot. The figures are not checked:
//! speed is measured by `bench/run.sh`, not by tests.

use std::process::Command;

#[test]
fn every_benchmark_runs_once() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let plugins = root.join("plugins/target/wasm32-wasip2/release");
    assert!(
        plugins.join("noop.wasm").is_file(),
        "the plugins are not built: run the suite with `cargo xtask test`"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_shiphat-bench"));
    command.arg("--quick");
    // The Ansible leg needs ansible-playbook from a virtual environment; .ci/run makes one and
    // names it here. Without it the side-by-side compares shiphat and the shell script only.
    if let Some(ansible) = std::env::var_os("SHIPHAT_BENCH_ANSIBLE") {
        command.arg("--ansible").arg(ansible);
    }
    let output = command.output().expect("cannot run shiphat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "shiphat-bench --quick failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for measurement in [
        "per-step overhead, warm, in process (p50)",
        "time per step, chain of 3 no-op steps",
        "load and validate a 10-step workflow",
        "load noop.wasm",
        "`shiphat run`, 3 no-op steps, warm cache (median)",
        "same deploy, shiphat",
        "same deploy, shell",
        "ratio shiphat / shell",
    ] {
        assert!(
            stdout.contains(measurement),
            "no `{measurement}` row in:\n{stdout}"
        );
    }
    if std::env::var_os("SHIPHAT_BENCH_ANSIBLE").is_some() {
        assert!(
            stdout.contains("ratio ansible / shiphat"),
            "no ansible row in:\n{stdout}"
        );
    }
}

#[test]
fn the_per_step_mode_measures_only_the_per_step_overhead() {
    let output = Command::new(env!("CARGO_BIN_EXE_shiphat-bench"))
        .args(["--per-step", "--runs", "3"])
        .output()
        .expect("cannot run shiphat-bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "shiphat-bench --per-step failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let measurements: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|line| line.split(" | ").next())
        .filter(|what| *what != "measurement" && !what.starts_with("---"))
        .collect();
    assert_eq!(
        measurements,
        [
            "per-step overhead, warm, in process (p50)",
            "per-step overhead, warm, in process (p99)"
        ],
        "{stdout}"
    );
}

/// Runs `bench/daemon.sh --quick --no-build` with `args` and this build's `shiphat`; returns
/// its table.
fn daemon_bench(args: &[&str]) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    // The shiphat binary of this build, beside the benchmark binary.
    let shiphat =
        std::path::Path::new(env!("CARGO_BIN_EXE_shiphat-bench")).with_file_name("shiphat");
    assert!(
        shiphat.is_file(),
        "`{}` is not built: run the suite with `cargo xtask test`",
        shiphat.display()
    );
    let output = Command::new(root.join("bench/daemon.sh"))
        .args(["--quick", "--no-build"])
        .args(args)
        .env("SHIPHAT_BIN", &shiphat)
        .output()
        .expect("cannot run bench/daemon.sh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "bench/daemon.sh --quick {} failed:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn the_daemon_benchmark_runs_once() {
    let stdout = daemon_bench(&[]);
    assert!(
        stdout.contains("steps/s"),
        "no throughput row in:\n{stdout}"
    );
    assert!(
        stdout.contains("web: environments"),
        "no web page row in:\n{stdout}"
    );
}

#[test]
fn the_daemon_benchmark_runs_once_on_postgresql() {
    // A server of its own, three daemons on it, and one of them killed: about 30 s.
    let stdout = daemon_bench(&["--postgres"]);
    for row in [
        "steps/s, 1 daemon(s), 1 concurrent run(s)",
        "steps/s, 3 daemon(s), 10 concurrent run(s)",
        "idle RSS of each fresh daemon",
        "takeover after `kill -9`",
    ] {
        assert!(stdout.contains(row), "no `{row}` row in:\n{stdout}");
    }
}
