//! A real PostgreSQL server for tests, from Debian's `postgresql` package: `initdb` into a
//! temporary directory, listening on a free loopback port, stopped and removed when the last
//! test using it is done. The server refuses to run as root, so when the tests do, it runs as
//! the `postgres` user the package creates. Each test takes a fresh database of its own
//! ([`Postgres::database`]), so tests sharing the server cannot see each other's data.
//!
//! No mocks and no containers: the store is tested against the server it will meet. When the
//! server's programs are missing the tests fail, saying what to install.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// How long `initdb`, or the server's start or stop, may take. Each takes a second or two; a
/// loaded two-core machine building the suite at the same time can make it ten times that.
const COMMAND_DEADLINE: Duration = Duration::from_secs(90);

/// Where Debian's `postgresql-NN` packages put the server's programs, one folder per version.
const PROGRAMS: &str = "/usr/lib/postgresql";

/// How many connections the server takes: three per store, for as many tests at once as a
/// large machine runs, and a few more for the tests' own.
const MAX_CONNECTIONS: u32 = 500;

/// The user the server runs as when the tests run as root; Debian's package creates it.
const SERVER_USER: &str = "postgres";

/// A running server. Dropping it stops the server and removes its files.
pub struct Postgres {
    bin: PathBuf,
    /// Holds the data directory (`data/`), the socket and the server's log.
    dir: tempfile::TempDir,
    port: u16,
    as_root: bool,
    databases: AtomicUsize,
}

/// The server the tests of this process share while any of them holds it.
static SHARED: Mutex<Weak<Postgres>> = Mutex::new(Weak::new());

impl Postgres {
    /// The server the running tests share, started when none is running.
    pub fn shared() -> Arc<Postgres> {
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(server) = shared.upgrade() {
            return server;
        }
        let server = Arc::new(Postgres::start());
        *shared = Arc::downgrade(&server);
        server
    }

    /// Starts a new server of its own.
    pub fn start() -> Postgres {
        let bin = programs();
        let as_root = is_root();
        let dir = if as_root {
            // The `postgres` user must reach it: not a private directory of root's.
            tempfile::Builder::new()
                .prefix("shiphat-pg-")
                .tempdir_in("/tmp")
        } else {
            tempfile::Builder::new().prefix("shiphat-pg-").tempdir()
        }
        .expect("a temporary directory for the PostgreSQL server");
        if as_root {
            let mut chown = Command::new("chown");
            chown
                .arg(format!("{SERVER_USER}:{SERVER_USER}"))
                .arg(dir.path());
            run(
                chown,
                "chown",
                dir.path(),
                &format!(
                    "the tests run as root, so the server runs as the `{SERVER_USER}` user, which Debian's `postgresql` package creates; install it (`apt-get install postgresql`)"
                ),
            );
        }
        let mut server = Postgres {
            bin,
            dir,
            port: 0,
            as_root,
            databases: AtomicUsize::new(0),
        };
        let mut initdb = server.program("initdb");
        initdb
            .arg("-D")
            .arg(server.data())
            .args(["-A", "trust", "-U", "shiphat", "-E", "UTF8", "--locale=C"])
            // The data is thrown away after the tests: no need to wait for the disk.
            .arg("--no-sync");
        run(initdb, "initdb", server.dir.path(), "");
        // The server cannot be handed a bound socket, so the port is picked free and released;
        // another process taking it in between would only make the start fail, loudly.
        server.port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        server.pg_ctl("start");
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// One of the server's programs, run as the server's user.
    fn program(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", SERVER_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    fn pg_ctl(&self, action: &str) {
        let mut pg_ctl = self.program("pg_ctl");
        pg_ctl.arg("-D").arg(self.data()).arg("-l").arg(self.log());
        if action == "start" {
            pg_ctl.arg("-o").arg(format!(
                // Only the loopback address and a socket in the test's directory. The data
                // is thrown away after the tests, so the server need not wait for the disk;
                // the store's own settings (`synchronous_commit`) are what it sends. Each
                // store holds three connections, and a test machine with many cores runs
                // that many tests at once: the default of 100 would run out.
                "-k {} -p {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
                 -c max_connections={MAX_CONNECTIONS}",
                self.dir.path().display(),
                self.port
            ));
        } else {
            pg_ctl.args(["-m", "immediate"]);
        }
        pg_ctl
            .args(["-w", "-t"])
            .arg(COMMAND_DEADLINE.as_secs().to_string())
            .arg(action);
        run(pg_ctl, &format!("pg_ctl {action}"), self.dir.path(), "");
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The URL of `database` on this server, as the `shiphat` user, who owns every database.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://shiphat@127.0.0.1:{}/{database}", self.port)
    }

    /// A new, empty database; returns its URL.
    pub fn database(&self) -> String {
        let name = format!("t_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let mut admin = ::postgres::Client::connect(&self.url("postgres"), ::postgres::NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to the test server: {e}{}", self.tail()));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("cannot create database `{name}`: {e}"));
        self.url(&name)
    }

    /// Stops the server and starts it again on the same port and data: what a database
    /// restart looks like to its clients.
    pub fn restart(&self) {
        self.pg_ctl("stop");
        self.pg_ctl("start");
    }

    /// The end of the server's log, for a failure message.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        format!("\nthe server's log ends with:\n{}", &log[start..])
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: the data is thrown away, so nothing needs a clean shutdown.
        let mut pg_ctl = self.program("pg_ctl");
        pg_ctl
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-t"])
            .arg(COMMAND_DEADLINE.as_secs().to_string())
            .arg("stop");
        // A failure here leaves nothing to fix in a test that already ran; the directory goes.
        let _ = bounded(pg_ctl, self.dir.path());
    }
}

/// The newest server programs installed, or a failure saying how to install them.
fn programs() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(PROGRAMS)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "no PostgreSQL server programs in {PROGRAMS}/*/bin: the store's tests run a real PostgreSQL server; install Debian's `postgresql` package (`apt-get install postgresql`, or run `cargo xtask test`, which installs it)"
        ),
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs `command` within [`COMMAND_DEADLINE`], its output in `dir`; on failure, fails the test
/// with what it said, and `hint`.
fn run(command: Command, what: &str, dir: &Path, hint: &str) {
    if let Err(said) = bounded(command, dir) {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        panic!("{what} failed: {said}\n{hint}\nthe server's log:\n{log}");
    }
}

/// Runs `command` to its end, killing it after [`COMMAND_DEADLINE`]; its output goes to a file
/// in `dir` (not a pipe, which a server it starts would hold open).
fn bounded(mut command: Command, dir: &Path) -> Result<(), String> {
    let out_path = dir.join("command.out");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > COMMAND_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{command:?} took more than {COMMAND_DEADLINE:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let said = std::fs::read_to_string(&out_path).unwrap_or_default();
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} exited with {status}:\n{said}"))
    }
}
