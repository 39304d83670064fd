//! The same local deploy done three ways, measured in alternation: shiphat with its real
//! plugins, a POSIX shell script, and ansible-playbook. Check a JUnit report, copy a build into a
//! release directory and switch a `current` symlink, check a metric value.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{Row, ms, percentile, row};

/// Files in the build that every tool copies: a small static site.
const BUILD_FILES: usize = 50;
const FILE_BYTES: usize = 4096;

struct Tool {
    name: &'static str,
    work: PathBuf,
    times: Vec<Duration>,
    rss_kib: Vec<u64>,
}

/// One measured process: wall time and the peak resident memory of its largest process.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped with wait4, which also reports its peak memory"
)]
fn measure(command: &mut Command) -> Result<(Duration, u64)> {
    let started = Instant::now();
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child, which we reap here.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let took = started.elapsed();
    if waited != pid {
        bail!("wait4 failed");
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        bail!("{command:?} failed: {stderr}");
    }
    Ok((took, usage.ru_maxrss as u64))
}

fn prepare(work: &Path, deploy_yaml: &Path) -> Result<()> {
    std::fs::create_dir_all(work.join("build/assets"))?;
    for i in 0..BUILD_FILES {
        let dir = if i % 2 == 0 { "build" } else { "build/assets" };
        std::fs::write(
            work.join(dir).join(format!("file-{i}.txt")),
            vec![b'x'; FILE_BYTES],
        )?;
    }
    std::fs::create_dir_all(work.join("reports"))?;
    std::fs::write(
        work.join("reports/junit.xml"),
        r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="3" failures="0" errors="0">
  <testsuite name="site" tests="3" disabled="0" errors="0" failures="0">
    <testcase name="pages::index" classname="site" time="0.01"></testcase>
    <testcase name="api::health" classname="site" time="0.02"></testcase>
    <testcase name="api::login" classname="site" time="0.03"></testcase>
  </testsuite>
</testsuites>
"#,
    )?;
    std::fs::create_dir_all(work.join("www"))?;
    std::fs::copy(deploy_yaml, work.join("deploy.yaml"))?;
    Ok(())
}

/// Serves `/metrics` with a healthy error ratio until the process ends.
fn serve_metrics() -> Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut line = String::new();
            let _ = BufReader::new(&stream).read_line(&mut line);
            let body = "# TYPE demo_error_ratio gauge\ndemo_error_ratio 0.002\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    Ok(format!("http://{addr}/metrics"))
}

pub fn side_by_side(
    root: &Path,
    plugins: &Path,
    shiphat: &Path,
    ansible: Option<&Path>,
    rounds: usize,
) -> Result<Vec<Row>> {
    let base = tempfile::tempdir()?;
    let metrics_url = serve_metrics()?;
    let cache = base.path().join("cache");
    let names: &[&'static str] = if ansible.is_some() {
        &["shiphat", "shell", "ansible"]
    } else {
        &["shiphat", "shell"]
    };
    let mut tools: Vec<Tool> = names
        .iter()
        .map(|name| Tool {
            name,
            work: base.path().join(name),
            times: Vec::new(),
            rss_kib: Vec::new(),
        })
        .collect();
    for tool in &tools {
        prepare(&tool.work, &root.join("bench/deploy/deploy.yaml"))?;
    }
    let command = |tool: &Tool, release: &str| -> Command {
        match tool.name {
            "shiphat" => {
                let mut c = Command::new(shiphat);
                c.arg("run")
                    .arg(tool.work.join("deploy.yaml"))
                    .args(["--input", &format!("release={release}")])
                    .args(["--input", &format!("metrics_url={metrics_url}")])
                    .arg("--plugin-path")
                    .arg(plugins)
                    .env("SHIPHAT_CACHE_DIR", &cache);
                c
            }
            "shell" => {
                let mut c = Command::new("sh");
                c.arg(root.join("bench/deploy/deploy.sh"))
                    .arg(&tool.work)
                    .arg(release)
                    .arg(&metrics_url);
                c
            }
            _ => {
                let ansible = ansible.expect("ansible is measured only when given");
                // Ansible runs its modules from a temporary directory: paths must be absolute.
                let ansible = std::path::absolute(ansible).expect("a path to make absolute");
                // The venv's own interpreter: discovery would find whatever python3 is first.
                let python = ansible.with_file_name("python");
                let mut c = Command::new(&ansible);
                c.args(["-i", "localhost,", "-c", "local"])
                    .args([
                        "-e",
                        &format!("ansible_python_interpreter={}", python.display()),
                    ])
                    .arg(root.join("bench/deploy/deploy.yml"))
                    .args(["-e", &format!("work={}", tool.work.display())])
                    .args(["-e", &format!("release={release}")])
                    .args(["-e", &format!("metrics_url={metrics_url}")])
                    .env("ANSIBLE_LOCALHOST_WARNING", "false")
                    .env("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false");
                c
            }
        }
    };
    // A warm-up round: shiphat's compile cache and the OS's page cache, for all alike.
    for tool in &tools {
        measure(&mut command(tool, "warmup"))
            .with_context(|| format!("warming up {}", tool.name))?;
    }
    for round in 0..rounds {
        // Rotate who goes first, so drift in machine load hits every tool alike.
        for k in 0..tools.len() {
            let index = (round + k) % tools.len();
            let release = format!("r{round}");
            let (took, rss) = measure(&mut command(&tools[index], &release))?;
            tools[index].times.push(took);
            tools[index].rss_kib.push(rss);
        }
    }
    let mut rows = Vec::new();
    let mut medians = Vec::new();
    for tool in &mut tools {
        tool.times.sort();
        tool.rss_kib.sort();
        let median = percentile(&tool.times, 0.5);
        medians.push((tool.name, median));
        let rss = tool.rss_kib[tool.rss_kib.len() / 2];
        rows.push(row(
            format!("same deploy, {} (median of {rounds}; peak RSS)", tool.name),
            format!("{} ; {:.1} MiB", ms(median), rss as f64 / 1024.0),
            "",
        ));
    }
    let of = |name: &str| {
        medians
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, d)| d.as_secs_f64())
    };
    if let (Some(shiphat), Some(shell)) = (of("shiphat"), of("shell")) {
        rows.push(row(
            "ratio shiphat / shell",
            format!("{:.2}×", shiphat / shell),
            "≤ 1.0× (issue 15)",
        ));
    }
    if let (Some(shiphat), Some(ansible)) = (of("shiphat"), of("ansible")) {
        rows.push(row(
            "ratio ansible / shiphat",
            format!("{:.1}×", ansible / shiphat),
            "≥ 50×",
        ));
    }
    Ok(rows)
}
