//! The `deployer` plugin through the real `shiphat` binary: symlink deploys and rollbacks on
//! temporary directories, a deploy killed mid-copy, and the webhook against a local receiver
//! that checks the signature.

mod support;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use support::http::{Reply, Request, Server};
use support::{LIVE_WAIT, LiveRun, Run, TestDir};

/// A symlink deploy of `source` into `site`, with the release and extra `with:` keys.
fn deploy_yaml(source: &str, release: &str, extra: &str) -> String {
    let granted = source.split('/').next().unwrap();
    format!(
        "name: web\nsteps:\n  - id: deploy\n    uses: deployer\n    with: {{ strategy: symlink, source: {source}, target: site, release: \"{release}\"{extra} }}\n    allow: {{ read: [{granted}], write: [site] }}\n"
    )
}

fn rollback_yaml(extra: &str) -> String {
    format!(
        "name: web\nsteps:\n  - id: rollback\n    uses: deployer\n    with: {{ strategy: symlink, action: rollback, target: site{extra} }}\n    allow: {{ write: [site] }}\n"
    )
}

fn deploy(dir: &TestDir, release: &str, extra: &str) -> Run {
    let run = dir.run(&deploy_yaml("build", release, extra), &[]);
    assert_eq!(run.status("deploy"), "succeeded", "{}", run.stdout);
    run
}

fn current(dir: &TestDir) -> PathBuf {
    std::fs::read_link(dir.path().join("site/current")).expect("`current` is a symlink")
}

fn releases(dir: &TestDir) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.path().join("site/releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn build(dir: &TestDir, version: &str) {
    dir.write("build/index.html", format!("<h1>{version}</h1>"));
    dir.write("build/assets/app.js", format!("console.log('{version}')"));
}

/// The source digest as the plugin's README defines it, computed independently.
fn digest(root: &Path) -> String {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(root.join(rel)).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type().unwrap().is_dir() {
                walk(root, &rel, out);
            } else if rel != ".shiphat-release.json" {
                out.push(rel);
            }
        }
    }
    let mut files = Vec::new();
    walk(root, "", &mut files);
    files.sort();
    let mut hash = Sha256::new();
    for rel in files {
        let content = std::fs::read(root.join(&rel)).unwrap();
        hash.update(rel.as_bytes());
        hash.update([0]);
        hash.update(b"f");
        hash.update((content.len() as u64).to_be_bytes());
        hash.update(&content);
    }
    hex::encode(hash.finalize())
}

#[test]
fn two_deploys_switch_current_write_manifests_and_a_redeploy_changes_nothing() {
    let dir = TestDir::new();
    build(&dir, "1");
    let first = deploy(&dir, "1", "");
    let outputs = &first.step("deploy")["outputs"];
    assert_eq!(outputs["release"], "1");
    assert_eq!(outputs["previous_release"], Value::Null);
    assert_eq!(outputs["changed"], true);
    assert_eq!(current(&dir), Path::new("releases/1"));

    build(&dir, "2");
    let second = deploy(&dir, "2", "");
    let step = second.step("deploy");
    assert_eq!(step["outputs"]["release"], "2");
    assert_eq!(step["outputs"]["previous_release"], "1");
    assert_eq!(step["outputs"]["path"], "site/releases/2");
    assert_eq!(step["outputs"]["changed"], true);
    assert_eq!(
        step["summary"].as_str().unwrap().split(" (").next(),
        Some("deployed 2 over 1")
    );
    // Relative, as Capistrano makes it, so the tree can be moved or mounted elsewhere.
    assert_eq!(current(&dir), Path::new("releases/2"));
    let served = std::fs::read_to_string(dir.path().join("site/current/index.html")).unwrap();
    assert_eq!(served, "<h1>2</h1>");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("site/releases/1/index.html")).unwrap(),
        "<h1>1</h1>"
    );

    let release_dir = dir.path().join("site/releases/2");
    let manifest_text = std::fs::read_to_string(release_dir.join(".shiphat-release.json")).unwrap();
    let manifest: Value = serde_json::from_str(&manifest_text).unwrap();
    assert_eq!(manifest["release"], "2");
    assert_eq!(manifest["run_id"], second.finished()["run_id"]);
    assert_eq!(manifest["source_digest"], digest(&release_dir));
    assert_eq!(manifest["source_digest"], step["outputs"]["source_digest"]);
    assert_eq!(manifest["files"], 2);
    assert!(
        manifest["time"].as_str().unwrap().ends_with('Z'),
        "{manifest}"
    );

    let again = deploy(&dir, "2", "");
    let step = again.step("deploy");
    assert_eq!(step["outputs"]["changed"], false);
    assert_eq!(step["outputs"]["release"], "2");
    assert!(
        step["summary"]
            .as_str()
            .unwrap()
            .contains("already current"),
        "{step}"
    );
    assert_eq!(current(&dir), Path::new("releases/2"));
    assert_eq!(
        std::fs::read_to_string(release_dir.join(".shiphat-release.json")).unwrap(),
        manifest_text,
        "a redeploy must not rewrite the release"
    );
    assert_eq!(releases(&dir), ["1", "2"]);
}

#[test]
fn a_tar_gz_source_is_unpacked_with_the_same_digest_as_its_directory() {
    let dir = TestDir::new();
    build(&dir, "7");
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-czf", "dist/app.tar.gz", "-C", "build", "."])
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());

    let run = dir.run(&deploy_yaml("dist/app.tar.gz", "7", ""), &[]);
    let step = run.step("deploy");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(current(&dir), Path::new("releases/7"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("site/current/assets/app.js")).unwrap(),
        "console.log('7')"
    );
    assert_eq!(
        step["outputs"]["source_digest"],
        digest(&dir.path().join("build"))
    );
}

#[test]
fn a_tar_gz_entry_outside_the_release_is_refused() {
    let dir = TestDir::new();
    dir.write("build/ok.txt", "ok");
    dir.write("evil.txt", "evil");
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    // GNU tar keeps `..` in member names with -P.
    let tar = std::process::Command::new("tar")
        .args([
            "-czPf",
            "dist/app.tar.gz",
            "build/ok.txt",
            "build/../evil.txt",
        ])
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());
    let run = dir.run(&deploy_yaml("dist/app.tar.gz", "1", ""), &[]);
    let (kind, message) = run.error("deploy");
    assert_eq!(kind, "failed");
    assert!(message.contains("outside the release"), "{message}");
    assert!(!dir.path().join("site/current").exists());
    assert!(releases(&dir).is_empty(), "the partial release is removed");
}

#[test]
fn rollback_goes_to_the_release_before_and_to_a_named_one() {
    let dir = TestDir::new();
    for release in ["1", "2", "3"] {
        build(&dir, release);
        deploy(&dir, release, "");
    }
    let run = dir.run(&rollback_yaml(""), &[]);
    let step = run.step("rollback");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(step["outputs"]["release"], "2");
    assert_eq!(step["outputs"]["previous_release"], "3");
    assert_eq!(step["outputs"]["changed"], true);
    assert_eq!(current(&dir), Path::new("releases/2"));

    let run = dir.run(&rollback_yaml(""), &[]);
    assert_eq!(run.step("rollback")["outputs"]["release"], "1");
    assert_eq!(current(&dir), Path::new("releases/1"));
    let run = dir.run(&rollback_yaml(""), &[]);
    let (kind, message) = run.error("rollback");
    assert_eq!(kind, "failed");
    assert!(message.contains("nothing to roll back to"), "{message}");

    let run = dir.run(&rollback_yaml(", release: \"3\""), &[]);
    assert_eq!(run.step("rollback")["outputs"]["release"], "3");
    assert_eq!(current(&dir), Path::new("releases/3"));
    let run = dir.run(&rollback_yaml(", release: \"3\""), &[]);
    assert_eq!(run.step("rollback")["outputs"]["changed"], false);
    let run = dir.run(&rollback_yaml(", release: \"9\""), &[]);
    assert_eq!(run.error("rollback").0, "failed");
    assert_eq!(current(&dir), Path::new("releases/3"));
}

#[test]
fn on_failure_rolls_back_to_the_previous_release_output() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    build(&dir, "2");
    let yaml = format!(
        "{}  - id: verify\n    uses: echo\n    needs: [deploy]\n    with: {{ fail: smoke test red }}\non_failure:\n  - id: rollback\n    uses: deployer\n    with: {{ strategy: symlink, action: rollback, target: site, release: \"${{{{ steps.deploy.outputs.previous_release }}}}\" }}\n    allow: {{ write: [site] }}\n",
        deploy_yaml("build", "2", "")
    );
    let run = dir.run(&yaml, &[]);
    assert_eq!(run.status("deploy"), "succeeded", "{}", run.stdout);
    assert_eq!(run.status("rollback"), "succeeded", "{}", run.stdout);
    assert_eq!(current(&dir), Path::new("releases/1"));
}

/// Regression: after deploying 1, 2, 1 again and a failing 3, a rollback said "rolled back
/// from 3 to 2" (the release deployed before 3 by time) while 1 had been live.
#[test]
fn rollback_returns_to_the_release_that_was_live_before() {
    let dir = TestDir::new();
    for release in ["1", "2"] {
        build(&dir, release);
        deploy(&dir, release, "");
    }
    build(&dir, "1");
    let again = deploy(&dir, "1", "");
    assert_eq!(again.step("deploy")["outputs"]["previous_release"], "2");
    build(&dir, "3");
    let run = deploy(&dir, "3", "");
    assert_eq!(run.step("deploy")["outputs"]["previous_release"], "1");

    let run = dir.run(&rollback_yaml(""), &[]);
    let step = run.step("rollback");
    assert_eq!(step["summary"], "rolled back from 3 to 1", "{}", run.stdout);
    assert_eq!(current(&dir), Path::new("releases/1"));
    // The rollback popped 3: the next one goes back to what was live before 1 went live.
    let run = dir.run(&rollback_yaml(""), &[]);
    assert_eq!(run.step("rollback")["summary"], "rolled back from 1 to 2");
    assert_eq!(current(&dir), Path::new("releases/2"));
    let history = std::fs::read_to_string(dir.path().join("site/.shiphat-history")).unwrap();
    let names: Vec<&str> = history
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(names, ["1", "2"], "{history}");
}

#[test]
fn keep_prunes_the_oldest_releases() {
    let dir = TestDir::new();
    for release in ["1", "2", "3", "4"] {
        build(&dir, release);
        deploy(&dir, release, ", keep: 2");
    }
    assert_eq!(releases(&dir), ["3", "4"]);
    assert_eq!(current(&dir), Path::new("releases/4"));
}

#[test]
fn keep_never_deletes_the_previous_release() {
    let dir = TestDir::new();
    for release in ["1", "2"] {
        build(&dir, release);
        deploy(&dir, release, "");
    }
    build(&dir, "3");
    deploy(&dir, "3", ", keep: 1");
    assert_eq!(releases(&dir), ["2", "3"]);
}

#[test]
fn a_dry_run_reports_and_changes_nothing() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    build(&dir, "2");
    let run = dir.run(&deploy_yaml("build", "2", ""), &["--dry-run"]);
    let step = run.step("deploy");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(step["summary"], "would deploy 2 over 1 (copy 2 files)");
    assert_eq!(step["outputs"]["changed"], false);
    assert_eq!(current(&dir), Path::new("releases/1"));
    assert_eq!(releases(&dir), ["1"]);

    let run = dir.run(&rollback_yaml(""), &["--dry-run"]);
    assert_eq!(
        run.error("rollback").0,
        "failed",
        "only one release to roll back from"
    );
    assert_eq!(current(&dir), Path::new("releases/1"));
}

#[test]
fn a_release_name_that_is_not_one_path_component_is_invalid_config() {
    let dir = TestDir::new();
    build(&dir, "1");
    // Written literally, the engine refuses it before anything runs.
    let run = dir.run(&deploy_yaml("build", "../x", ""), &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("with.release"), "{}", run.stderr);
    // From an expression, it is refused once resolved, naming the key.
    let yaml = deploy_yaml("build", "${{ inputs.release }}", "").replace(
        "name: web\n",
        "name: web\ninputs:\n  release: { type: string }\n",
    );
    let run = dir.run(&yaml, &["--input", "release=a/b"]);
    let (kind, message) = run.error("deploy");
    assert_eq!(kind, "invalid_config");
    assert!(message.contains("release"), "{message}");
    assert!(!dir.path().join("site/releases").exists());
}

#[test]
fn keys_a_strategy_needs_are_required_by_name() {
    let dir = TestDir::new();
    let yaml = "name: web\nsteps:\n  - id: hook\n    uses: deployer\n    with: { strategy: webhook, release: \"2\", secret: KEY }\n";
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("url"), "{}", run.stderr);
    let yaml = "name: web\nsteps:\n  - id: hook\n    uses: deployer\n    with: { strategy: symlink, release: \"2\", target: site }\n    allow: { write: [site] }\n";
    let run = dir.run(yaml, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains("source"), "{}", run.stderr);
}

/// Regression guard for the crash-safety promise: a deploy killed while copying must leave
/// `current` on the previous, intact release, and the next deploy must clean up after it. The
/// killed deploy's lock used to outlive it, blocking the next deploy until someone deleted it.
#[test]
fn a_deploy_killed_mid_copy_leaves_current_on_the_previous_release() {
    const FILES: usize = 3000;
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    let release_1 = digest(&dir.path().join("site/releases/1"));

    let chunk = vec![b'x'; 4096];
    for i in 0..FILES {
        dir.write(&format!("build/files/{:02}/{i}.bin", i % 50), &chunk);
    }
    let file = dir.write("workflow.yaml", deploy_yaml("build", "2", ""));
    let mut child = dir
        .shiphat()
        .arg("run")
        .arg(&file)
        .arg("--json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let releases_dir = dir.path().join("site/releases");
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(&releases_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with(".2.partial-"));
        if let Some(name) = found {
            break name;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the deploy finished before its partial directory was seen; make the source bigger"
        );
        assert!(Instant::now() < deadline, "no partial directory appeared");
        std::thread::yield_now();
    };
    child.kill().unwrap();
    child.wait().unwrap();

    assert!(
        !releases_dir.join("2").exists(),
        "killed after the copy finished; make the source bigger"
    );
    assert!(releases_dir.join(&partial).is_dir());
    assert_eq!(current(&dir), Path::new("releases/1"));
    assert_eq!(digest(&releases_dir.join("1")), release_1);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("site/current/index.html")).unwrap(),
        "<h1>1</h1>"
    );

    // The killed deploy's lock died with its process: the next deploy goes on at once.
    let run = deploy(&dir, "2", "");
    assert!(
        run.logs("deploy").iter().any(|l| l.contains(&partial)),
        "{:?}",
        run.logs("deploy")
    );
    assert_eq!(releases(&dir), ["1", "2"]);
    assert_eq!(current(&dir), Path::new("releases/2"));
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(releases_dir.join("2/.shiphat-release.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["files"], FILES + 2);
}

/// Runs `yaml` like [`TestDir::run`], under `strace`, and returns the run and the trace's
/// lines: each `fsync` and rename, with the path of every file descriptor (`-y`).
fn traced_run(dir: &TestDir, yaml: &str) -> (Run, Vec<String>) {
    let file = dir.write("workflow.yaml", yaml);
    let trace = dir.path().join("strace.txt");
    let shiphat = dir.shiphat();
    let mut command = std::process::Command::new("strace");
    command
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,syncfs,rename,renameat,renameat2",
            "-o",
        ])
        .arg(&trace)
        .arg(shiphat.get_program())
        .args(["run", "--json"])
        .arg(&file)
        .current_dir(dir.path());
    for (key, value) in shiphat.get_envs() {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let run = Run::of(command);
    let trace = std::fs::read_to_string(&trace)
        .unwrap_or_else(|e| panic!("no trace ({e}); this test needs `strace`: {}", run.stderr));
    (run, trace.lines().map(str::to_owned).collect())
}

/// The index of the first `fsync` in `trace` of a path ending in `end`.
fn synced(trace: &[String], end: &str) -> Option<usize> {
    let end = format!("{end}>)");
    trace
        .iter()
        .position(|line| line.contains("fsync(") && line.contains(&end))
}

// Without syncing, a deploy survived a kill but not a power cut: the rename of `current` could
// reach the disk before the release's files and names did, leaving `current` on empty files.
#[test]
fn a_durable_deploy_syncs_the_release_before_switching_current_and_the_target_after() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    build(&dir, "2");
    assert_synced_in_order(&dir, &deploy_yaml("build", "2", ""), "2");

    // The same from a `.tar.gz`, whose files are written by another path.
    build(&dir, "3");
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-czf", "dist/app.tar.gz", "-C", "build", "."])
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());
    assert_synced_in_order(&dir, &deploy_yaml("dist/app.tar.gz", "3", ""), "3");

    // `durable: false` syncs nothing of the target.
    build(&dir, "4");
    let (run, trace) = traced_run(&dir, &deploy_yaml("build", "4", ", durable: false"));
    assert_eq!(run.status("deploy"), "succeeded", "{}", run.stdout);
    let synced_site: Vec<_> = trace
        .iter()
        .filter(|line| {
            (line.contains("fsync(") || line.contains("syncfs(")) && line.contains("/site")
        })
        .collect();
    assert!(synced_site.is_empty(), "{synced_site:?}");
    assert_eq!(current(&dir), Path::new("releases/4"));
}

/// Deploys `release` by `yaml` under `strace` and checks the order: the release's files and
/// directories made durable (one `syncfs` of the release's filesystem) and `releases/` synced
/// before the rename onto `current`, the target after.
fn assert_synced_in_order(dir: &TestDir, yaml: &str, release: &str) {
    let (run, trace) = traced_run(dir, yaml);
    assert_eq!(run.status("deploy"), "succeeded", "{}", run.stdout);
    let all = || trace.join("\n");
    let switch = trace
        .iter()
        .position(|line| line.contains("rename") && line.contains("\"current\""))
        .unwrap_or_else(|| panic!("no rename to `current` in:\n{}", all()));
    let run_id = run.finished()["run_id"].as_str().unwrap();
    let partial = format!("/site/releases/.{release}.partial-{run_id}");
    let release_synced = trace
        .iter()
        .position(|line| line.contains("syncfs(") && line.contains(&format!("{partial}>)")))
        .unwrap_or_else(|| panic!("the release's filesystem never synced:\n{}", all()));
    let named = trace
        .iter()
        .position(|line| line.contains("rename") && line.contains(&format!("\"{release}\")")))
        .unwrap_or_else(|| panic!("the release never renamed into place:\n{}", all()));
    assert!(
        release_synced < named,
        "the release renamed into place before it was synced:\n{}",
        all()
    );
    let at = synced(&trace, "/site/releases")
        .unwrap_or_else(|| panic!("`/site/releases` never synced:\n{}", all()));
    assert!(
        at < switch,
        "`/site/releases` synced after the switch:\n{}",
        all()
    );
    let target_after = trace[switch..]
        .iter()
        .any(|line| line.contains("fsync(") && line.contains("/site>)"));
    assert!(
        target_after,
        "the target not synced after the switch:\n{}",
        all()
    );
    assert_eq!(current(dir), Path::new("releases").join(release));
}

// ---------------------------------------------------------------------------------------------
// The lock on a target: two `shiphat run` processes, no daemon.

/// A deploy that holds the lock on `site` until [`Holder::release`]: its source is a FIFO
/// named like a `.tar.gz`, and opening it blocks until the test opens the other end, which is
/// after the lock is taken and before anything is copied.
struct Holder {
    run: LiveRun,
    fifo: PathBuf,
    /// What the lock file says while this deploy holds it.
    owner: Value,
}

impl Holder {
    fn start(dir: &TestDir) -> Holder {
        let fifo = dir.mkfifo("dist/held.tar.gz");
        let mut run = LiveRun::start(
            dir,
            "holder.yaml",
            &deploy_yaml("dist/held.tar.gz", "held", "").replace("id: deploy", "id: hold"),
        );
        let owner_file = dir.path().join("site/.shiphat-lock");
        let deadline = Instant::now() + LIVE_WAIT;
        let owner = loop {
            // The file outlives each lock; only the holder's own name says it holds it.
            if let Ok(owner) = std::fs::read_to_string(&owner_file)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()))
                && owner["step_id"] == "hold"
            {
                break owner;
            }
            if !run.is_running() {
                panic!(
                    "the holding deploy ended before its lock was seen: {:?}",
                    run.events_so_far()
                );
            }
            assert!(Instant::now() < deadline, "no lock appeared in `site`");
            std::thread::yield_now();
        };
        Holder { run, fifo, owner }
    }

    /// Lets the holding deploy go on (its source reads as empty, so its step fails), and waits
    /// for its step to end.
    fn release(mut self) -> Value {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking, so a holder that never opens its end cannot hang the test.
        let deadline = Instant::now() + LIVE_WAIT;
        let writer = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.fifo)
            {
                Ok(writer) => break writer,
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    assert!(
                        Instant::now() < deadline,
                        "the holder never opened its source"
                    );
                    std::thread::yield_now();
                }
                Err(e) => panic!("opening the FIFO: {e}"),
            }
        };
        drop(writer);
        self.run.finished("hold")
    }
}

// Two one-shot `shiphat run` processes on one target interleaved: the second one's cleanup
// deleted the first one's partial release, and `current` went to whichever switched last.
#[test]
fn a_deploy_of_a_target_another_deploy_holds_fails_naming_the_holder() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    let holder = Holder::start(&dir);

    build(&dir, "2");
    let run = dir.run(&deploy_yaml("build", "2", ""), &[]);
    assert_eq!(run.status("deploy"), "failed", "{}", run.stdout);
    let (_, message) = run.error("deploy");
    for part in [
        holder.owner["run_id"].as_str().unwrap(),
        holder.owner["since"].as_str().unwrap(),
        "step `hold`",
        "wait_for_lock",
    ] {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
    assert_eq!(current(&dir), Path::new("releases/1"));
    assert!(!dir.path().join("site/releases/2").exists());

    // The holder's step fails (its source is empty) and still releases the lock.
    let held = holder.release();
    assert_eq!(held["status"], "failed", "{held}");
    deploy(&dir, "2", "");
    assert_eq!(current(&dir), Path::new("releases/2"));
}

// A lock left by a killed deploy blocked every later deploy for an hour, or until someone
// deleted it. The lock file stays, naming its last holder, but holds no lock once that holder
// is gone.
#[test]
fn a_lock_file_whose_holder_is_gone_holds_nothing() {
    let dir = TestDir::new();
    build(&dir, "1");
    let owner = json!({
        "run_id": "01killedjustnow", "workflow": "web", "step_id": "deploy", "attempt": 1,
        "since": "2026-12-01T00:00:00.000Z",
    });
    dir.write("site/.shiphat-lock", owner.to_string());
    deploy(&dir, "1", "");
    assert_eq!(current(&dir), Path::new("releases/1"));
}

#[test]
fn a_deploy_stopped_by_its_timeout_leaves_no_lock_behind() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    // The holder blocks on its FIFO source with the lock taken, until its timeout stops it.
    dir.mkfifo("dist/held.tar.gz");
    let stopped = dir.run(
        &deploy_yaml("dist/held.tar.gz", "held", "")
            .replace("uses: deployer", "uses: deployer\n    timeout: 1s"),
        &[],
    );
    let (kind, message) = stopped.error("deploy");
    assert_eq!(kind, "timeout", "{message}");

    build(&dir, "2");
    deploy(&dir, "2", "");
    assert_eq!(current(&dir), Path::new("releases/2"));
}

// An older shiphat's lock was a directory of the same name; one left by a deploy it could not
// finish is named, with what to do.
#[test]
fn an_older_shiphats_lock_directory_is_named_with_what_to_do() {
    let dir = TestDir::new();
    build(&dir, "1");
    dir.write("site/.shiphat-lock/owner.json", "{}");
    let run = dir.run(&deploy_yaml("build", "1", ""), &[]);
    let (_, message) = run.error("deploy");
    assert!(
        message.contains("older shiphat") && message.contains("delete it"),
        "{message}"
    );
}

// With nothing to wait on, a second deploy could only fail or interleave; `wait_for_lock` lets
// it run once the first one ends.
#[test]
fn with_wait_for_lock_a_deploy_runs_once_the_holder_ends() {
    let dir = TestDir::new();
    build(&dir, "1");
    deploy(&dir, "1", "");
    let holder = Holder::start(&dir);
    let holder_run = holder.owner["run_id"].as_str().unwrap().to_string();

    build(&dir, "2");
    let mut waiting = LiveRun::start(
        &dir,
        "waiting.yaml",
        &deploy_yaml("build", "2", ", wait_for_lock: 2m"),
    );
    waiting.wait_for("a log saying the deploy waits for the holder", |e| {
        e["event"] == "log"
            && e["message"]
                .as_str()
                .is_some_and(|m| m.contains("waiting") && m.contains(&holder_run))
    });
    assert_eq!(current(&dir), Path::new("releases/1"));

    holder.release();
    let step = waiting.finished("deploy");
    assert_eq!(step["status"], "succeeded", "{step}");
    assert_eq!(step["outputs"]["previous_release"], "1");
    assert_eq!(current(&dir), Path::new("releases/2"));
}

// ---------------------------------------------------------------------------------------------
// The webhook strategy.

const SECRET: &str = "s3cr3t-hook-key";

/// Whether `X-Shiphat-Signature` is the HMAC-SHA256 of `<timestamp>.<body>` under
/// [`SECRET`].
fn signed_correctly(request: &Request) -> bool {
    let timestamp = request.header("x-shiphat-timestamp").unwrap_or("");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(&request.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    request.header("x-shiphat-signature") == Some(expected.as_str())
}

/// A status, extra headers and a body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// A loopback receiver answering from a script, one answer per request; the last one repeats.
fn scripted(script: Vec<Answer>) -> Server {
    let script = Mutex::new(VecDeque::from(script));
    Server::start(move |_, _| {
        let mut script = script.lock().unwrap();
        let (status, headers, body) = if script.len() > 1 {
            script.pop_front().unwrap()
        } else {
            script.front().cloned().unwrap()
        };
        Reply {
            status,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            body,
        }
    })
}

fn webhook_yaml(receiver: &Server, extra: &str) -> String {
    format!(
        "name: web\nsteps:\n  - id: hook\n    uses: deployer\n    with: {{ strategy: webhook, url: \"{}\", secret: HOOK_KEY, release: \"42\", environment: production{extra} }}\n    allow: {{ http: [\"127.0.0.1:{}\"], secrets: [HOOK_KEY] }}\n    retries: {{ count: 2, backoff: {{ initial: 10ms }} }}\n",
        receiver.url("/deploys"),
        receiver.port()
    )
}

fn run_hook(receiver: &Server, extra: &str, args: &[&str]) -> Run {
    let dir = TestDir::new();
    let file = dir.write("workflow.yaml", webhook_yaml(receiver, extra));
    let mut command = dir.shiphat();
    command
        .env("HOOK_KEY", SECRET)
        .arg("run")
        .arg(&file)
        .arg("--json")
        .args(args);
    Run::of(command)
}

#[test]
fn a_webhook_posts_a_signed_payload_and_2xx_succeeds() {
    let receiver = scripted(vec![(200, vec![], "{\"ok\":true}".into())]);
    let run = run_hook(&receiver, "", &[]);
    let step = run.step("hook");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(step["outputs"]["http_status"], 200);
    assert_eq!(step["outputs"]["release"], "42");

    let requests = receiver.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(
        (request.method.as_str(), request.target.as_str()),
        ("POST", "/deploys")
    );
    assert!(signed_correctly(request), "{request:?}");
    let payload: Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(payload["release"], "42");
    assert_eq!(payload["environment"], "production");
    assert_eq!(payload["workflow"], "web");
    assert_eq!(payload["run_id"], run.finished()["run_id"]);
    assert!(!run.stdout.contains(SECRET));
}

#[test]
fn a_webhook_signature_made_with_another_key_does_not_verify() {
    let receiver = scripted(vec![(200, vec![], String::new())]);
    let dir = TestDir::new();
    let file = dir.write("workflow.yaml", webhook_yaml(&receiver, ""));
    let mut command = dir.shiphat();
    command
        .env("HOOK_KEY", "another-key")
        .arg("run")
        .arg(&file)
        .arg("--json");
    let run = Run::of(command);
    assert_eq!(run.status("hook"), "succeeded");
    assert!(!signed_correctly(&receiver.requests()[0]));
}

#[test]
fn a_webhook_500_is_transient_and_retried_with_the_same_idempotency_key() {
    let receiver = scripted(vec![
        (500, vec![], "database is restarting".into()),
        (200, vec![], String::new()),
    ]);
    let run = run_hook(&receiver, "", &[]);
    let step = run.step("hook");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(step["attempts"], 2);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(signed_correctly));
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );

    let always = scripted(vec![(503, vec![], "down".into())]);
    let run = run_hook(&always, "", &[]);
    let (kind, message) = run.error("hook");
    assert_eq!(kind, "transient");
    assert!(message.contains("503"), "{message}");
    assert_eq!(always.requests().len(), 3, "one attempt and two retries");
}

#[test]
fn a_webhook_400_fails_with_the_start_of_the_body() {
    let body = format!("unknown environment `production`{}", "!".repeat(400));
    let receiver = scripted(vec![(400, vec![], body)]);
    let run = run_hook(&receiver, "", &[]);
    let (kind, message) = run.error("hook");
    assert_eq!(kind, "failed");
    assert!(message.contains("400"), "{message}");
    assert!(
        message.contains("unknown environment `production`"),
        "{message}"
    );
    assert!(
        message.len() < 400,
        "only the first 200 characters: {message}"
    );
    assert_eq!(receiver.requests().len(), 1, "a 4xx is not retried");
}

#[test]
fn a_webhook_202_is_followed_to_its_status_url_until_done() {
    let receiver = scripted(vec![
        (202, vec![("location", "/deploys/7".into())], String::new()),
        (200, vec![], json!({"status": "pending"}).to_string()),
        (200, vec![], json!({"status": "running"}).to_string()),
        (200, vec![], json!({"status": "succeeded"}).to_string()),
    ]);
    let run = run_hook(&receiver, ", poll_interval: 50ms", &[]);
    let step = run.step("hook");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert_eq!(step["outputs"]["deploy_status"], "succeeded");
    assert_eq!(step["outputs"]["status_url"], receiver.url("/deploys/7"));
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4);
    assert!(
        requests[1..]
            .iter()
            .all(|r| r.method == "GET" && r.target == "/deploys/7")
    );
    assert!(requests.iter().all(signed_correctly));
}

#[test]
fn a_webhook_status_url_that_says_failed_fails_with_its_message() {
    let receiver = scripted(vec![
        (200, vec![], json!({"status_url": "/deploys/8"}).to_string()),
        (
            200,
            vec![],
            json!({"status": "failed", "message": "health check red"}).to_string(),
        ),
    ]);
    let run = run_hook(&receiver, ", poll_interval: 50ms", &[]);
    let (kind, message) = run.error("hook");
    assert_eq!(kind, "failed");
    assert!(message.contains("health check red"), "{message}");
}

#[test]
fn a_webhook_still_pending_at_its_timeout_fails() {
    let receiver = scripted(vec![
        (202, vec![("location", "/deploys/9".into())], String::new()),
        (200, vec![], json!({"status": "pending"}).to_string()),
    ]);
    let run = run_hook(&receiver, ", poll_interval: 50ms, timeout: 300ms", &[]);
    let (kind, message) = run.error("hook");
    assert_eq!(kind, "failed");
    assert!(message.contains("still `pending`"), "{message}");
}

#[test]
fn a_webhook_dry_run_sends_nothing() {
    let receiver = scripted(vec![(200, vec![], String::new())]);
    let run = run_hook(&receiver, "", &["--dry-run"]);
    let step = run.step("hook");
    assert_eq!(step["status"], "succeeded", "{}", run.stdout);
    assert!(
        step["summary"].as_str().unwrap().starts_with("would POST"),
        "{step}"
    );
    assert!(receiver.requests().is_empty());
}

/// Regression: `target: /abs/path` failed with "the link path leaves its grant" after the
/// release was copied, and `target: ../x` with "No such file or directory (os error 44)".
/// Capistrano's `deploy_to` is absolute; both must work.
#[test]
fn absolute_and_climbing_targets_deploy() {
    let outer = TestDir::new();
    let dir_path = outer.path().join("project");
    std::fs::create_dir_all(dir_path.join("build")).unwrap();
    std::fs::write(dir_path.join("build/index.html"), "<h1>1</h1>").unwrap();
    let absolute = outer.path().join("srv/www");
    for (target, live) in [
        (absolute.display().to_string(), absolute.clone()),
        ("../x".to_owned(), outer.path().join("x")),
    ] {
        let yaml = format!(
            "name: web\nsteps:\n  - id: deploy\n    uses: deployer\n    with: {{ strategy: symlink, source: build, target: \"{target}\", release: \"1\" }}\n    allow: {{ read: [build], write: [\"{target}\"] }}\n"
        );
        let file = dir_path.join("deploy.yaml");
        std::fs::write(&file, yaml).unwrap();
        let mut command = outer.shiphat();
        command
            .current_dir(&dir_path)
            .arg("run")
            .arg(&file)
            .arg("--json");
        let run = Run::of(command);
        assert_eq!(
            run.status("deploy"),
            "succeeded",
            "{target}: {}",
            run.stdout
        );
        assert_eq!(
            std::fs::read_link(live.join("current")).unwrap(),
            Path::new("releases/1"),
            "{target}"
        );
        assert!(live.join("releases/1/index.html").is_file(), "{target}");
    }
}

/// Regression: a missing grant surfaced as WASI's "(os error 44)", and only once the step
/// ran. Written literally, `validate` names it before anything runs; from an expression, the
/// plugin names it.
#[test]
fn a_missing_grant_is_named_before_the_run_or_without_errno_text() {
    let dir = TestDir::new();
    build(&dir, "1");
    let literal = "name: web\nsteps:\n  - id: deploy\n    uses: deployer\n    with: { strategy: symlink, source: build, target: site, release: \"1\" }\n    allow: { write: [site] }\n";
    let run = dir.run(literal, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the step reads `build` but `allow.read` does not grant it"),
        "{}",
        run.stderr
    );
    let templated = "name: web\ninputs:\n  source: { type: string, default: build }\nsteps:\n  - id: deploy\n    uses: deployer\n    with: { strategy: symlink, source: \"${{ inputs.source }}\", target: site, release: \"1\" }\n    allow: { write: [site] }\n";
    let run = dir.run(templated, &[]);
    let (kind, message) = run.error("deploy");
    assert!(
        matches!(kind, "failed" | "invalid_config"),
        "{kind}: {message}"
    );
    assert!(!message.contains("os error"), "{message}");
    assert!(message.contains("allow.read"), "{message}");
}

/// Regression: a dry run said "would deploy" where the real run then failed for a missing
/// `write` grant.
#[test]
fn a_dry_run_fails_where_the_real_run_would_for_a_missing_grant() {
    let dir = TestDir::new();
    build(&dir, "1");
    // A read grant must exist to be opened; the step may read it but not write it.
    std::fs::create_dir_all(dir.path().join("site")).unwrap();
    for allow in ["{ read: [build] }", "{ read: [build, site] }"] {
        // From an expression, so that `validate` cannot see it and the plugin must.
        let yaml = format!(
            "name: web\ninputs:\n  target: {{ type: string, default: site }}\nsteps:\n  - id: deploy\n    uses: deployer\n    with: {{ strategy: symlink, source: build, target: \"${{{{ inputs.target }}}}\", release: \"1\" }}\n    allow: {allow}\n"
        );
        let dry = dir.run(&yaml, &["--dry-run"]);
        let (kind, message) = dry.error("deploy");
        assert_eq!(kind, "failed", "{allow}: {}", dry.stdout);
        assert!(message.contains("allow.write"), "{allow}: {message}");
        let real = dir.run(&yaml, &[]);
        assert_eq!(real.error("deploy").0, "failed", "{allow}");
        assert!(!dir.path().join("site/releases").exists());
    }
}

/// A build whose tree holds `link -> target`, as a directory and as a `.tar.gz` of it.
fn build_with_link(dir: &TestDir, link: &str, target: &str) {
    build(dir, "1");
    std::os::unix::fs::symlink(target, dir.path().join("build").join(link)).unwrap();
    std::fs::create_dir_all(dir.path().join("dist")).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-czf", "dist/app.tar.gz", "-C", "build", "."])
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());
}

#[test]
fn a_symlink_out_of_the_release_is_refused_from_a_tarball_and_a_directory() {
    // Bug: a relative symlink that climbs out (`esc -> ../../../../outside`) was unpacked or
    // copied into the release, and a later step granted a path through it left every grant.
    for (link, target) in [
        ("esc", "../../../../outside"),
        ("assets/up", "../../x"),
        ("sneaky", "assets/../../x"),
        ("abs", "/etc"),
    ] {
        for source in ["dist/app.tar.gz", "build"] {
            let dir = TestDir::new();
            build_with_link(&dir, link, target);
            let run = dir.run(&deploy_yaml(source, "1", ""), &[]);
            let (kind, message) = run.error("deploy");
            assert_eq!(kind, "failed", "{source} {link}: {message}");
            // WASI cannot even read a symlink to an absolute path in a source directory: that
            // one is named without its target.
            let named = if source == "build" && target.starts_with('/') {
                format!("`{link}`")
            } else {
                format!("`{link}` -> `{target}`")
            };
            assert!(message.contains(&named), "{source} {link}: {message}");
            assert!(!dir.path().join("site/current").exists());
            assert!(releases(&dir).is_empty(), "the partial release is removed");
        }
    }
}

#[test]
fn a_symlink_inside_the_release_is_deployed() {
    // The check refuses only what leaves the release: links within it are a release's own.
    let dir = TestDir::new();
    build_with_link(&dir, "assets/index", "../index.html");
    let run = dir.run(&deploy_yaml("dist/app.tar.gz", "1", ""), &[]);
    assert_eq!(run.status("deploy"), "succeeded", "{}", run.stdout);
    let link = dir.path().join("site/releases/1/assets/index");
    assert_eq!(
        std::fs::read_link(link).unwrap(),
        Path::new("../index.html")
    );
}

#[test]
fn a_tar_gz_hardlink_or_absolute_entry_is_refused() {
    // Each other way a tar entry can point outside the release: a hardlink, an absolute name.
    let dir = TestDir::new();
    build(&dir, "1");
    std::fs::hard_link(
        dir.path().join("build/index.html"),
        dir.path().join("build/again.html"),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("dist")).unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-czf", "dist/app.tar.gz", "-C", "build", "."])
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());
    let run = dir.run(&deploy_yaml("dist/app.tar.gz", "1", ""), &[]);
    let (kind, message) = run.error("deploy");
    assert_eq!(kind, "failed");
    assert!(message.contains("html"), "{message}");
    assert!(message.contains("Link"), "{message}");

    let abs = dir.path().join("build/index.html");
    let tar = std::process::Command::new("tar")
        .args(["-czPf", "dist/app.tar.gz"])
        .arg(&abs)
        .current_dir(dir.path())
        .status()
        .expect("the system `tar`");
    assert!(tar.success());
    let run = dir.run(&deploy_yaml("dist/app.tar.gz", "2", ""), &[]);
    let (kind, message) = run.error("deploy");
    assert_eq!(kind, "failed");
    assert!(message.contains("outside the release"), "{message}");
    assert!(releases(&dir).is_empty());
}
