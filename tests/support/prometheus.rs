//! A real Prometheus server (Debian's `prometheus` package) on a free loopback port: one that
//! scrapes the test's app every second, or one loaded with recorded series written by
//! `promtool tsdb create-blocks-from openmetrics`, as a team would import history.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where Debian's `prometheus` package puts the server and its tool.
const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// How long Prometheus may take to start and scrape the app for the first time. It scrapes
/// every second; the rest is start-up, which takes a few seconds on a loaded machine.
const PROMETHEUS_READY: Duration = Duration::from_secs(30);

/// A Prometheus server, killed when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) every second, and waits until it
    /// has scraped it once.
    pub fn scraping(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let prometheus = Prometheus::start(dir, &config, &[]);
        prometheus.wait_for("up", "1");
        prometheus
    }

    /// Starts Prometheus on the series of `openmetrics` (OpenMetrics text with timestamps,
    /// ending in `# EOF`), turned into blocks by `promtool`, scraping nothing. Its samples
    /// stay visible to a query up to `lookback` after them (Prometheus's default is 5 min).
    pub fn recorded(openmetrics: &str, lookback: Duration) -> Prometheus {
        need(PROMTOOL);
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("series.om");
        std::fs::write(&input, openmetrics).unwrap();
        let output = Command::new(PROMTOOL)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&input)
            .arg(dir.path().join("data"))
            .output()
            .expect("cannot run promtool");
        assert!(
            output.status.success(),
            "promtool refused the series: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let lookback = format!("--query.lookback-delta={}s", lookback.as_secs());
        // Imported history may be older than the default 15 days it keeps.
        let keep = "--storage.tsdb.retention.time=100y";
        let prometheus = Prometheus::start(dir, "scrape_configs: []\n", &[&lookback, keep]);
        prometheus.wait_for("vector(1)", "1");
        prometheus
    }

    fn start(dir: tempfile::TempDir, config: &str, flags: &[&str]) -> Prometheus {
        need(PROMETHEUS);
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).unwrap();
        // Prometheus cannot be handed a bound socket, so the port is picked free and released;
        // another process taking it in between would only make this test fail, loudly.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(PROMETHEUS)
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--config.file={}", config_file.display()))
            .args(flags)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus");
        Prometheus { child, addr, dir }
    }

    /// The base URL, for `address:`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the instant query `query` gives `value`, e.g. after the app's metrics
    /// changed and Prometheus has yet to scrape them.
    pub fn wait_for(&self, query: &str, value: &str) {
        let deadline = Instant::now() + PROMETHEUS_READY;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(answer) = self.query(query) {
                if answer["data"]["result"][0]["value"][1] == value {
                    return;
                }
                last = answer.to_string();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "prometheus did not answer `{query}` with {value} within {PROMETHEUS_READY:?}; last answer: {last}\nits log:\n{}",
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
        );
    }

    /// One instant query, or `None` while Prometheus is not answering yet.
    pub fn query(&self, query: &str) -> Option<Value> {
        let mut stream = TcpStream::connect(self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let query: String = query
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        // HTTP/1.0, so that the answer is never chunked and ends when the connection closes.
        write!(stream, "GET /api/v1/query?query={query} HTTP/1.0\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }
}

fn need(file: &str) {
    assert!(
        Path::new(file).is_file(),
        "{file} is missing: these tests need a real Prometheus server; install the `prometheus` Debian package (`apt-get install prometheus`)"
    );
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
