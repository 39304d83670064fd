//! The demo target: what `workflows/deploy.yaml` deploys, checks and verifies on a machine
//! with nothing else installed.
//!
//! - `build/<release>/`: the sample site of each release, with an `app.json` saying how well
//!   that release behaves;
//! - `reports/junit.xml`: the JUnit report of the release's test run;
//! - `www/`: the deploy target (`releases/`, `current`), written by the deployer plugin;
//! - an app on loopback that serves `/metrics` in the Prometheus text format, whose error
//!   ratio is the one of the release `www/current` points at: deploy a bad release and the
//!   metrics say so.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the demo app serves its metrics when the port is free: `metrics_url`'s default in
/// `workflows/deploy.yaml`.
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

/// The release whose app fails 8% of its requests.
pub const BAD_RELEASE: &str = "3";

/// The release whose app fails 3% of its requests: neither healthy (below 1%) nor bad (5% or
/// more), so the verifier's verdict is Inconclusive and a person decides.
pub const INCONCLUSIVE_RELEASE: &str = "4";

/// Each release's error ratio: 1 and 2 are healthy, 3 is the bad one, 4 the doubtful one.
const RELEASES: [(&str, f64); 4] = [
    ("1", 0.002),
    ("2", 0.003),
    (BAD_RELEASE, 0.08),
    (INCONCLUSIVE_RELEASE, 0.03),
];

pub struct Demo {
    dir: PathBuf,
    pub metrics_addr: SocketAddr,
}

impl Demo {
    /// Lays the demo out afresh in `dir` and starts the app's metrics endpoint.
    pub fn prepare(dir: &Path) -> Result<Demo> {
        if dir.exists() {
            std::fs::remove_dir_all(dir)
                .with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        for (release, error_ratio) in RELEASES {
            let site = dir.join("build").join(release);
            std::fs::create_dir_all(site.join("assets"))?;
            std::fs::write(
                site.join("index.html"),
                format!(
                    "<!doctype html>\n<title>shiphat demo</title>\n<h1>Release {release}</h1>\n"
                ),
            )?;
            std::fs::write(
                site.join("assets/app.css"),
                format!("/* release {release} */\nh1 {{ color: teal; }}\n"),
            )?;
            std::fs::write(
                site.join("app.json"),
                format!("{{\"release\": \"{release}\", \"error_ratio\": {error_ratio}}}\n"),
            )?;
        }
        std::fs::create_dir_all(dir.join("reports"))?;
        std::fs::write(dir.join("reports/junit.xml"), JUNIT)?;
        std::fs::create_dir_all(dir.join("www"))?;
        // The port `workflows/deploy.yaml` names by default, so a deploy started from the web
        // page needs no input but the release; any free port when it is taken.
        let listener = TcpListener::bind(DEFAULT_METRICS)
            .or_else(|_| TcpListener::bind("127.0.0.1:0"))
            .context("cannot open a loopback port for the demo app")?;
        let metrics_addr = listener.local_addr()?;
        let www = dir.join("www");
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let _ = serve(stream, &www);
            }
        });
        Ok(Demo {
            dir: dir.to_owned(),
            metrics_addr,
        })
    }

    /// Where `www/current` points.
    pub fn current(&self) -> Result<String> {
        let link = std::fs::read_link(self.dir.join("www/current"))
            .context("www/current is not a symlink")?;
        Ok(link.display().to_string())
    }
}

/// Answers one request: `/metrics` with the current release's error ratio.
fn serve(mut stream: std::net::TcpStream, www: &Path) -> std::io::Result<()> {
    let mut request_line = String::new();
    BufReader::new(&stream).read_line(&mut request_line)?;
    let (status, body) = if request_line.starts_with("GET /metrics") {
        let ratio = std::fs::read_to_string(www.join("current/app.json"))
            .ok()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .and_then(|app| app["error_ratio"].as_f64());
        let body = match ratio {
            Some(ratio) => format!(
                "# HELP demo_error_ratio Share of requests that failed in the last minute.\n# TYPE demo_error_ratio gauge\ndemo_error_ratio {ratio}\n# HELP demo_up Whether a release is deployed.\n# TYPE demo_up gauge\ndemo_up 1\n"
            ),
            None => "# TYPE demo_up gauge\ndemo_up 0\n".to_owned(),
        };
        ("200 OK", body)
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A JUnit report as cargo-nextest writes it, for the release's test run.
const JUNIT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="nextest-run" tests="6" failures="0" errors="0" uuid="5a4e1b0c-8f3e-4c1e-9d4f-2b7c1f0e9a11" timestamp="2026-11-26T09:12:44.018+00:00" time="1.284">
    <testsuite name="site" tests="4" disabled="0" errors="0" failures="0">
        <testcase name="pages::index_renders" classname="site" timestamp="2026-11-26T09:12:44.020+00:00" time="0.012">
        </testcase>
        <testcase name="pages::assets_are_linked" classname="site" timestamp="2026-11-26T09:12:44.021+00:00" time="0.009">
        </testcase>
        <testcase name="api::health" classname="site" timestamp="2026-11-26T09:12:44.022+00:00" time="0.411">
        </testcase>
        <testcase name="api::login" classname="site" timestamp="2026-11-26T09:12:44.023+00:00" time="0.502">
        </testcase>
    </testsuite>
    <testsuite name="site::e2e" tests="2" disabled="1" errors="0" failures="0">
        <testcase name="cart_checkout" classname="site::e2e" timestamp="2026-11-26T09:12:44.530+00:00" time="0.317">
        </testcase>
        <testcase name="slow_soak" classname="site::e2e" timestamp="2026-11-26T09:12:44.531+00:00" time="0.000">
            <skipped/>
        </testcase>
    </testsuite>
</testsuites>
"#;
