//! Shared helpers for the integration tests: the plugins (built once per test run), the real
//! `shiphat` binary, and a temporary directory per test.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

pub mod expressions;
pub mod http;
mod plugins;
pub mod prometheus;
pub mod wat;

#[allow(
    unused_imports,
    reason = "each test binary uses a different subset of the helpers"
)]
pub use plugins::{plugin, plugins_dir, root, shared_cache};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A temporary directory for one test, removed when it is dropped.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> Self {
        TestDir {
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file (creating its directories) and returns its path.
    pub fn write(&self, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        path
    }

    /// Makes a FIFO (creating its directories) and returns its path. Opening it for reading
    /// blocks until someone opens it for writing: a file call that never returns by itself.
    pub fn mkfifo(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: `c_path` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        path
    }

    /// The `shiphat` binary, set up to find the test plugins and use the shared cache.
    pub fn shiphat(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_shiphat"));
        command
            .current_dir(self.path())
            .env_remove("SHIPHAT_PLUGIN_PATH")
            .env_remove("SHIPHAT_SECRETS_FILE")
            .env_remove("SHIPHAT_SERVER")
            .env_remove("SHIPHAT_TOKEN")
            .env_remove("SHIPHAT_STORE")
            .env_remove("SHIPHAT_STORE_PASSWORD")
            .env_remove("RUST_LOG")
            .env("SHIPHAT_CACHE_DIR", shared_cache())
            .env("SHIPHAT_PLUGIN_PATH", plugins_dir());
        command
    }

    /// Writes `workflow.yaml` and runs it with `--json`, plus `args`.
    pub fn run(&self, yaml: &str, args: &[&str]) -> Run {
        let file = self.write("workflow.yaml", yaml);
        let mut command = self.shiphat();
        command.arg("run").arg(&file).arg("--json").args(args);
        Run::of(command)
    }
}

/// Runs `git ARGS` in `dir` as a throwaway author; fails the test if git does.
pub fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Compares `actual` with the golden file `path` (under the repository's root), or rewrites
/// the file when `BLESS` is set. Returns what to report when they differ.
pub fn golden(path: &str, actual: &str) -> Option<String> {
    let expected = root().join(path);
    if std::env::var_os("BLESS").is_some() {
        std::fs::write(&expected, actual).unwrap();
        return None;
    }
    (std::fs::read_to_string(&expected).ok().as_deref() != Some(actual)).then(|| {
        format!(
            "{} (rerun with BLESS=1 to accept):\n{actual}",
            expected.display()
        )
    })
}

/// The Python and JavaScript examples (`notify.wasm`, 19 MB; `semver-gate.wasm`), built once
/// per test binary by the script the guide shows, with the toolchains it names.
pub fn examples() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let out = tempfile::tempdir().expect("a temporary directory");
        let output = Command::new("bash")
            .arg(root().join("plugins/examples/build-any-language.sh"))
            .arg(out.path())
            .output()
            .expect("cannot run bash");
        assert!(
            output.status.success(),
            "building the Python and JavaScript examples failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        out
    })
    .path()
}

/// How a `shiphat` process ended.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub events: Vec<Value>,
    pub wall: Duration,
    /// Peak resident memory of the process, in KiB.
    pub max_rss_kib: u64,
}

/// How long any one `shiphat` process in a test may take before the test gives up on it.
const PROCESS_DEADLINE: Duration = Duration::from_secs(120);

impl Run {
    /// Runs a command to its end (killing it after [`PROCESS_DEADLINE`]), and measures it.
    #[allow(
        clippy::zombie_processes,
        reason = "the child is reaped with wait4 below, which also reports its peak memory"
    )]
    pub fn of(mut command: Command) -> Run {
        let started = Instant::now();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start shiphat");
        let pid = child.id() as libc::pid_t;
        let mut stdout_pipe = child.stdout.take().unwrap();
        let mut stderr_pipe = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stdout_pipe, &mut s).unwrap();
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut stderr_pipe, &mut s).unwrap();
            s
        });
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watching = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + PROCESS_DEADLINE;
            while Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
                if watching.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
            }
            // SAFETY: the child has not been reaped (`done` is unset), so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(waited, pid, "wait4 failed");
        let wall = started.elapsed();
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        let stdout = out.join().unwrap();
        let stderr = err.join().unwrap();
        let events = stdout
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(
            wall < PROCESS_DEADLINE,
            "shiphat ran past the test deadline and was killed:\n{stderr}"
        );
        Run {
            code,
            stdout,
            stderr,
            events,
            wall,
            max_rss_kib: usage.ru_maxrss as u64,
        }
    }

    /// The `step_finished` event of a step.
    pub fn step(&self, id: &str) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "step_finished" && e["step"] == id)
            .unwrap_or_else(|| {
                panic!(
                    "no step_finished for `{id}`; events:\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// A step's status: `succeeded`, `failed`, `skipped`.
    pub fn status(&self, id: &str) -> &str {
        self.step(id)["status"].as_str().unwrap()
    }

    /// A failed step's error kind and message.
    pub fn error(&self, id: &str) -> (&str, &str) {
        let error = &self.step(id)["error"];
        (
            error["kind"].as_str().unwrap_or(""),
            error["message"].as_str().unwrap_or(""),
        )
    }

    /// The log lines of a step.
    pub fn logs(&self, id: &str) -> Vec<&str> {
        self.events
            .iter()
            .filter(|e| e["event"] == "log" && e["step"] == id)
            .map(|e| e["message"].as_str().unwrap())
            .collect()
    }

    /// The `run_finished` event.
    pub fn finished(&self) -> &Value {
        self.events
            .iter()
            .find(|e| e["event"] == "run_finished")
            .unwrap_or_else(|| {
                panic!(
                    "no run_finished; exit {}; stdout:\n{}\nstderr:\n{}",
                    self.code, self.stdout, self.stderr
                )
            })
    }
}

/// A one-request-at-a-time HTTP server on loopback that answers every request with `200 ok`
/// and counts what it got. Stops when dropped.
pub struct HttpServer {
    pub addr: std::net::SocketAddr,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpServer {
    pub fn start() -> HttpServer {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (h, s) = (hits.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut stream, _)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .unwrap();
                        let mut buf = [0u8; 8192];
                        let _ = stream.read(&mut buf);
                        h.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nhello ok");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        HttpServer { addr, hits, stop }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Starts a `shiphat serve` command and waits, up to `deadline`, for the line saying where it
/// listens. Returns the child, that address, and the rest of its stderr, line by line (read on
/// a thread, so the daemon never blocks on a full pipe).
pub fn serve(
    mut command: Command,
    deadline: Duration,
) -> (
    std::process::Child,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    use std::io::BufRead;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start shiphat serve");
    let (tx, rx) = std::sync::mpsc::channel();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let mut seen = String::new();
    loop {
        match rx.recv_timeout(deadline.saturating_sub(started.elapsed())) {
            Ok(line) => {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    // The lines before this one stay readable: what the daemon said while it
                    // started (a workflow it refused, say) is part of what a test reads.
                    let (tx, all) = std::sync::mpsc::channel();
                    for line in seen.lines() {
                        let _ = tx.send(line.to_owned());
                    }
                    std::thread::spawn(move || {
                        for line in rx {
                            if tx.send(line).is_err() {
                                return;
                            }
                        }
                    });
                    return (child, addr.trim().to_owned(), all);
                }
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the daemon did not say where it listens:\n{seen}");
            }
        }
    }
}

/// How long a daemon may take to start listening.
const DAEMON_START: Duration = Duration::from_secs(60);
/// How long one call to the daemon may take.
const DAEMON_CALL: Duration = Duration::from_secs(60);

/// A running `shiphat serve`, killed when dropped. Its stderr lines arrive on `stderr`.
pub struct Daemon {
    pub child: std::process::Child,
    pub addr: String,
    pub stderr: std::sync::Mutex<std::sync::mpsc::Receiver<String>>,
}

impl Daemon {
    /// Starts `shiphat serve --listen 127.0.0.1:0 ARGS` in `dir` and waits until it is ready:
    /// it listens and its workflows are loaded (`GET /readyz`). Relative paths in `args` are
    /// taken from `dir`.
    pub fn start(dir: &TestDir, args: &[&str]) -> Daemon {
        let daemon = Daemon::listening(dir, args);
        let started = Instant::now();
        loop {
            let (status, _, body) = daemon.call("GET", "/readyz", &[], None);
            if status == 200 {
                return daemon;
            }
            assert!(
                started.elapsed() < DAEMON_START,
                "the daemon never became ready: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Daemon::start`] that returns as soon as the daemon listens, its workflows perhaps
    /// still loading.
    pub fn listening(dir: &TestDir, args: &[&str]) -> Daemon {
        let mut command = dir.shiphat();
        command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args);
        let (child, addr, rx) = serve(command, DAEMON_START);
        Daemon {
            child,
            addr,
            stderr: std::sync::Mutex::new(rx),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Reads the daemon's stderr until a line contains `needle`; returns every line read, one
    /// per line. Fails the test after `deadline`, showing what was read.
    pub fn wait_for_stderr(&self, needle: &str, deadline: Duration) -> String {
        let started = Instant::now();
        let stderr = self.stderr.lock().unwrap();
        let mut said = String::new();
        while !said.contains(needle) {
            let left = deadline.saturating_sub(started.elapsed());
            assert!(!left.is_zero(), "the daemon never said `{needle}`:\n{said}");
            if let Ok(line) = stderr.recv_timeout(left.min(Duration::from_millis(100))) {
                said.push_str(&line);
                said.push('\n');
            }
        }
        said
    }

    /// One request with these headers and body; returns the status, the response headers and
    /// the JSON body (or the text as a JSON string).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (u16, Headers, Value) {
        let agent = agent(DAEMON_CALL);
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(self.url(path));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let result = match body {
            Some(body) => agent.run(request.body(body.to_owned()).unwrap()),
            None => agent.run(request.body(()).unwrap()),
        };
        let mut response = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = Headers(
            response
                .headers()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                .collect(),
        );
        // Large enough for the biggest run the tests read back, with all its logs.
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, headers, value)
    }
}

/// Response headers, kept as owned text.
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns error statuses as responses and gives up after `deadline`.
pub fn agent(deadline: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(deadline))
        .build()
        .into()
}

/// A pipe whose reading end is already closed: whoever writes to it gets EPIPE at once, as
/// `shiphat run … | head` does once `head` has exited.
pub fn closed_pipe() -> Stdio {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills `fds` with two new descriptors, which we own from here on.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fds[0] is ours and used nowhere else.
    unsafe { libc::close(fds[0]) };
    // SAFETY: fds[1] is open and owned by nobody else.
    Stdio::from(unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[1]) })
}

/// Runs `command` with stdout, stderr or both into a [`closed_pipe`]. Returns the exit code
/// (-1 for a signal) and stderr when it was not closed.
pub fn run_with_closed_output(
    mut command: Command,
    close_stdout: bool,
    close_stderr: bool,
) -> (i32, String) {
    command.stdin(Stdio::null());
    command.stdout(if close_stdout {
        closed_pipe()
    } else {
        Stdio::null()
    });
    command.stderr(if close_stderr {
        closed_pipe()
    } else {
        Stdio::piped()
    });
    let mut child = command.spawn().expect("cannot start shiphat");
    let stderr = child.stderr.take().map(|mut pipe| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut pipe, &mut s);
            s
        })
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_DEADLINE {
            let _ = child.kill();
            panic!("shiphat ran past the test deadline and was killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = stderr.map(|t| t.join().unwrap()).unwrap_or_default();
    (status.code().unwrap_or(-1), stderr)
}

/// How long a test waits for a background run to reach the point it waits for.
pub const LIVE_WAIT: Duration = Duration::from_secs(60);

/// A `shiphat run FILE --json` in the background, its events read as they come and its stderr
/// kept; killed if the test ends first.
pub struct LiveRun {
    child: std::process::Child,
    events: std::sync::mpsc::Receiver<Value>,
    stderr: Option<std::thread::JoinHandle<String>>,
    /// Every event read so far.
    pub seen: Vec<Value>,
}

impl LiveRun {
    /// Writes `yaml` to `file` in `dir` and runs it.
    pub fn start(dir: &TestDir, file: &str, yaml: &str) -> LiveRun {
        use std::io::{BufRead, Read};
        let file = dir.write(file, yaml);
        let mut child = dir
            .shiphat()
            .arg("run")
            .arg(&file)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(event) = serde_json::from_str(&line)
                    && tx.send(event).is_err()
                {
                    return;
                }
            }
        });
        // Read as it comes, so that a chatty run never blocks on a full pipe.
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        LiveRun {
            child,
            events,
            stderr: Some(stderr),
            seen: Vec::new(),
        }
    }

    /// Waits for the first event `matches` accepts, and returns it.
    pub fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + LIVE_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what}; events: {:?}", self.seen));
            self.seen.push(event.clone());
            if matches(&event) {
                return event;
            }
        }
    }

    /// Waits for the `step_started` event of `step`.
    pub fn wait_started(&mut self, step: &str) -> Value {
        self.wait_for(&format!("step_started for `{step}`"), |e| {
            e["event"] == "step_started" && e["step"] == step
        })
    }

    /// Waits for the `step_finished` event of `step`, and returns it.
    pub fn finished(&mut self, step: &str) -> Value {
        self.wait_for(&format!("step_finished for `{step}`"), |e| {
            e["event"] == "step_finished" && e["step"] == step
        })
    }

    /// Whether the run is still going.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Every event read so far, after reading those that have come.
    pub fn events_so_far(&mut self) -> &[Value] {
        self.seen.extend(self.events.try_iter());
        &self.seen
    }

    /// Sends `signal` to the run.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: the child is running (not reaped), so its pid is ours.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, signal) },
            0
        );
    }

    /// Waits for the end; returns the exit code, every event and stderr.
    pub fn finish(mut self) -> (i32, Vec<Value>, String) {
        let deadline = Instant::now() + LIVE_WAIT;
        while let Ok(event) = self
            .events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(event);
        }
        let status = self.child.wait().unwrap();
        let stderr = self
            .stderr
            .take()
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        (
            status.code().unwrap_or(-1),
            std::mem::take(&mut self.seen),
            stderr,
        )
    }
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
