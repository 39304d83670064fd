//! Plugins from OCI registries (issue 19), against a real registry: Debian's `docker-registry`
//! (the CNCF distribution registry), started on a loopback port with a temporary storage
//! directory, without auth and with htpasswd basic auth. `oras` (its Python SDK, from the test
//! tools' virtual environment) checks that the layout interoperates both ways.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Run, TestDir, plugin};

const REGISTRY: &str = "/usr/bin/docker-registry";
const DEADLINE: Duration = Duration::from_secs(30);
/// A user of the registry with basic auth, and the bcrypt hash of its password (htpasswd's
/// format, which is all `docker-registry` reads).
const USER: &str = "ci";
const PASSWORD: &str = "s3cret";
const HTPASSWD: &str = "ci:$2b$12$QUwkT/1OIaWobGkejm9NXemn8Af1STaXlZV76io4QPOW9r6/fG7/C\n";

struct Registry {
    child: Option<Child>,
    addr: String,
    dir: tempfile::TempDir,
    auth: bool,
}

impl Registry {
    fn start(auth: bool) -> Registry {
        assert!(
            Path::new(REGISTRY).is_file(),
            "{REGISTRY} is missing: the OCI tests need a real registry; install the `docker-registry` Debian package (`cargo xtask test` does)"
        );
        let dir = tempfile::tempdir().unwrap();
        // The registry cannot be handed a bound socket: the port is picked free and released.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut registry = Registry {
            child: None,
            addr,
            dir,
            auth,
        };
        registry.restart();
        registry
    }

    fn restart(&mut self) {
        let dir = self.dir.path();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {}\n",
            dir.join("data").display(),
            self.addr
        );
        if self.auth {
            std::fs::write(dir.join("htpasswd"), HTPASSWD).unwrap();
            config += &format!(
                "auth:\n  htpasswd:\n    realm: shiphat-test\n    path: {}\n",
                dir.join("htpasswd").display()
            );
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("cannot start docker-registry");
        self.child = Some(child);
        let started = Instant::now();
        let agent = support::agent(Duration::from_secs(2));
        loop {
            // 200 without auth, 401 with: either way it answers.
            match agent.get(&format!("http://{}/v2/", self.addr)).call() {
                Ok(_) | Err(ureq::Error::StatusCode(401)) => return,
                Err(_) => {}
            }
            assert!(
                started.elapsed() < DEADLINE,
                "docker-registry did not answer on {}: {}",
                self.addr,
                std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn reference(&self, repo_tag: &str) -> String {
        format!("oci://{}/{repo_tag}", self.addr)
    }

    /// A GET on the registry's API, as the test user when it has auth.
    fn get(&self, path: &str, accept: &str) -> Vec<u8> {
        let mut request = support::agent(DEADLINE)
            .get(&format!("http://{}{path}", self.addr))
            .header("Accept", accept);
        if self.auth {
            use base64_like::encode;
            request = request.header(
                "Authorization",
                &format!("Basic {}", encode(&format!("{USER}:{PASSWORD}"))),
            );
        }
        let mut response = request.call().expect("the registry answers");
        response.body_mut().read_to_vec().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Base64 for one basic-auth header, in a test: not worth a dependency.
mod base64_like {
    pub fn encode(text: &str) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let bytes = text.as_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A test directory whose `shiphat` has a cache of its own (so that what is cached is this
/// test's doing) and an empty Docker config unless the test writes one.
struct Workspace {
    dir: TestDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = TestDir::new();
        std::fs::create_dir_all(dir.path().join("docker")).unwrap();
        std::fs::create_dir_all(dir.path().join("workflows")).unwrap();
        Workspace { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    /// `shiphat ARGS` with this workspace's cache and Docker config, no registry credentials
    /// from the environment but `vars`.
    fn with_env(&self, vars: &[(&str, &str)], args: &[&str]) -> Run {
        let mut command = self.dir.shiphat();
        command
            .env("SHIPHAT_CACHE_DIR", self.cache())
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env_remove("SHIPHAT_REGISTRY_HOST")
            .env_remove("SHIPHAT_REGISTRY_USERNAME")
            .env_remove("SHIPHAT_REGISTRY_PASSWORD")
            .env_remove("SHIPHAT_REGISTRY_TOKEN")
            .envs(vars.iter().copied())
            .args(args);
        Run::of(command)
    }

    fn shiphat(&self, args: &[&str]) -> Run {
        self.with_env(&[], args)
    }

    /// Writes `workflows/NAME.yaml`: one step that runs `uses` with a message.
    fn workflow(&self, name: &str, uses: &str) -> PathBuf {
        self.dir.write(
            &format!("workflows/{name}.yaml"),
            format!(
                "name: {name}\nsteps:\n  - id: hello\n    uses: {uses}\n    with: {{ message: \"hello from {name}\" }}\n    allow: {{ http: [\"hooks.example.com\"] }}\n"
            ),
        )
    }

    fn run(&self, workflow: &Path, extra: &[&str]) -> Run {
        let mut args = vec!["run", workflow.to_str().unwrap(), "--json"];
        args.extend_from_slice(extra);
        self.shiphat(&args)
    }
}

fn ok(run: &Run) -> &Run {
    assert_eq!(
        run.code, 0,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    run
}

/// The `@sha256:…` a push printed.
fn pushed_digest(run: &Run) -> String {
    let at = run
        .stdout
        .rfind("@sha256:")
        .expect("a digest in the push's output");
    run.stdout[at + 1..].trim().to_owned()
}

fn logged(run: &Run, text: &str) -> bool {
    run.events
        .iter()
        .any(|e| e["event"] == "log" && e["message"].as_str().is_some_and(|m| m.contains(text)))
}

#[test]
fn push_pull_lock_drift_and_offline_against_a_real_registry() {
    let mut registry = Registry::start(false);
    let w = Workspace::new();
    let echo = plugin("echo");
    let tag = registry.reference("acme/hello:1");

    // Push writes the Wasm OCI Artifact layout, annotated from describe().
    let push = w.shiphat(&["plugin", "push", echo.to_str().unwrap(), &tag]);
    ok(&push);
    assert!(push.stdout.starts_with("pushed echo "), "{}", push.stdout);
    let d1 = pushed_digest(&push);
    let manifest: Value = serde_json::from_slice(&registry.get(
        "/v2/acme/hello/manifests/1",
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest:#}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "echo");
    assert!(annotations["org.opencontainers.image.version"].is_string());
    assert!(
        annotations["org.opencontainers.image.description"]
            .as_str()
            .unwrap()
            .contains("Logs a message")
    );
    let config: Value = serde_json::from_slice(&registry.get(
        &format!(
            "/v2/acme/hello/blobs/{}",
            manifest["config"]["digest"].as_str().unwrap()
        ),
        "*/*",
    ))
    .unwrap();
    assert_eq!(config["architecture"], "wasm");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["layerDigests"][0], layers[0]["digest"]);
    let names = |key: &str| -> Vec<String> {
        config["component"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap().to_owned())
            .collect()
    };
    assert!(names("exports").contains(&"run".to_owned()), "{config:#}");
    assert!(
        names("imports").iter().any(|i| i.starts_with("wasi:")),
        "{config:#}"
    );

    // Run by tag, with no lock file: the tag is resolved at the registry.
    let by_tag = w.workflow("by-tag", &tag);
    assert!(logged(ok(&w.run(&by_tag, &[])), "hello from by-tag"));
    // `--locked` wants a lock file entry, and says how to make one.
    let refused = w.run(&by_tag, &["--locked"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("is not pinned in"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("shiphat plugin lock"),
        "{}",
        refused.stderr
    );

    // Lock pins it.
    let lock = ok(&w.shiphat(&["plugin", "lock", "workflows"]))
        .stdout
        .clone();
    assert!(lock.contains(&format!("{tag}: (new) → {d1}")), "{lock}");
    assert!(
        lock.contains("grants it: http `hooks.example.com`"),
        "{lock}"
    );
    let lock_file = std::fs::read_to_string(w.dir.path().join("workflows/shiphat.lock")).unwrap();
    assert!(lock_file.contains(&d1), "{lock_file}");
    assert!(logged(
        ok(&w.run(&by_tag, &["--locked"])),
        "hello from by-tag"
    ));

    // `plugin inspect` takes the reference too.
    let inspect = ok(&w.shiphat(&["plugin", "inspect", &tag, "--json"]))
        .stdout
        .clone();
    let inspect: Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(inspect["name"], "echo", "{inspect}");

    // Pull fetches it, compiled, and can write it out; the bytes are the component's.
    let out = w.dir.path().join("pulled.wasm");
    let pull = ok(&w.shiphat(&["plugin", "pull", &tag, "-o", out.to_str().unwrap()]))
        .stdout
        .clone();
    assert!(pull.contains(&d1), "{pull}");
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&echo).unwrap());

    // The tag moves to another component: what runs does not change until the lock does, and
    // `--locked` refuses, naming both digests.
    let noop = plugin("noop");
    let moved = w.shiphat(&["plugin", "push", noop.to_str().unwrap(), &tag]);
    let d2 = pushed_digest(ok(&moved));
    assert_ne!(d1, d2);
    assert!(logged(ok(&w.run(&by_tag, &[])), "hello from by-tag"));
    let drift = w.run(&by_tag, &["--locked"]);
    assert_ne!(drift.code, 0);
    assert!(
        drift.stderr.contains("drifted")
            && drift.stderr.contains(&d1)
            && drift.stderr.contains(&d2),
        "{}",
        drift.stderr
    );
    // Run by digest: the first one, whatever the tag says.
    let by_digest = w.workflow(
        "by-digest",
        &format!("{}@{d1}", registry.reference("acme/hello")),
    );
    assert!(logged(
        ok(&w.run(&by_digest, &["--locked"])),
        "hello from by-digest"
    ));

    // The registry stops: what is cached still runs, locked or not.
    registry.stop();
    assert!(logged(
        ok(&w.run(&by_tag, &["--locked"])),
        "hello from by-tag"
    ));
    assert!(logged(ok(&w.run(&by_digest, &[])), "hello from by-digest"));

    // A corrupt blob in the cache is found, not run.
    let component = w.cache().join("oci/blobs/sha256").join(
        layers[0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let flip = || {
        let mut bytes = std::fs::read(&component).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&component, &bytes).unwrap();
    };
    flip();
    let corrupt = w.run(&by_tag, &[]);
    assert_ne!(corrupt.code, 0);
    assert!(
        corrupt.stderr.contains("does not match its pinned digest")
            && corrupt.stderr.contains("removed from the cache"),
        "{}",
        corrupt.stderr
    );
    // With the registry back, the next run fetches it again.
    registry.restart();
    assert!(logged(ok(&w.run(&by_tag, &[])), "hello from by-tag"));
    // A pull mends a damaged cache too.
    flip();
    ok(&w.shiphat(&["plugin", "pull", &format!("{tag}@{d1}")]));
    assert!(logged(ok(&w.run(&by_tag, &[])), "hello from by-tag"));

    // The daemon runs only what the lock pins: with the tag moved, the workflow is refused,
    // naming both digests; once the registry is down, it loads from the cache.
    let daemon = |w: &Workspace| {
        let mut command = w.dir.shiphat();
        command
            .env("SHIPHAT_CACHE_DIR", w.cache())
            .env("DOCKER_CONFIG", w.dir.path().join("docker"))
            .args([
                "-v",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--workflows",
                "workflows",
            ])
            .args(["--data-dir", "data"]);
        let (child, addr, stderr) = support::serve(command, Duration::from_secs(60));
        support::Daemon {
            child,
            addr,
            stderr: std::sync::Mutex::new(stderr),
        }
    };
    let d = daemon(&w);
    let said = d.wait_for_stderr("drifted", DEADLINE);
    assert!(said.contains(&d1) && said.contains(&d2), "{said}");
    drop(d);
    registry.stop();
    let d = daemon(&w);
    d.wait_for_stderr("loaded workflow `by-tag`", DEADLINE);
    drop(d);
    registry.restart();

    // Updating the lock shows what changed: the plugin, its config and the grants it gets.
    let update = ok(&w.shiphat(&["plugin", "lock"])).stdout.clone();
    assert!(update.contains(&format!("{tag}: {d1} → {d2}")), "{update}");
    assert!(update.contains("plugin: echo → noop"), "{update}");
    assert!(update.contains("config: - `message`"), "{update}");
    assert!(
        update.contains("grants it: http `hooks.example.com`"),
        "{update}"
    );
    // The workflow pinned by digest is left out of the lock: once it went in as a reference
    // with neither tag nor digest, and the lock could not be read again.
    let lock_file_now =
        std::fs::read_to_string(w.dir.path().join("workflows/shiphat.lock")).unwrap();
    let references: Vec<&str> = lock_file_now
        .lines()
        .filter(|l| l.starts_with("reference = "))
        .collect();
    assert_eq!(
        references,
        [format!("reference = \"{tag}\"")],
        "{lock_file_now}"
    );
    // Now the lock runs noop, which takes no `message`: the workflow is refused for it.
    let now = w.run(&by_tag, &["--locked"]);
    assert_ne!(now.code, 0);

    // A change that only updates the lock runs other code with the same grants: `validate
    // --against-git` shows it as the plugin change it is, and `--deny-widening` stops it.
    let review = |path: &str, text: &str| w.dir.write(&format!("review/{path}"), text);
    let plain = review(
        "plain.yaml",
        &format!(
            "name: plain\nsteps:\n  - id: hello\n    uses: {tag}\n    allow: {{ http: [\"hooks.example.com\"] }}\n"
        ),
    );
    review("shiphat.lock", &lock_file);
    let git = |args: &[&str]| support::git(&w.dir.path().join("review"), args);
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "locked to echo"]);
    review("shiphat.lock", &lock_file_now);
    let diff = w.shiphat(&[
        "validate",
        plain.to_str().unwrap(),
        "--against-git",
        "HEAD",
        "--deny-widening",
    ]);
    assert_eq!(diff.code, 1, "{}\n{}", diff.stdout, diff.stderr);
    assert!(
        diff.stdout
            .contains(&format!("plugin `{tag}@{d1}` → `{tag}@{d2}`")),
        "{}",
        diff.stdout
    );
}

#[test]
fn credentials_come_from_the_environment_or_docker_config_never_the_command_line() {
    let registry = Registry::start(true);
    let w = Workspace::new();
    let echo = plugin("echo");
    let tag = registry.reference("acme/private:1");

    let anonymous = w.shiphat(&["plugin", "push", echo.to_str().unwrap(), &tag]);
    assert_ne!(anonymous.code, 0);
    assert!(
        anonymous.stderr.contains(&registry.addr),
        "the refusal names the registry: {}",
        anonymous.stderr
    );

    // Environment credentials, for the registry they name.
    let host = registry.addr.as_str();
    let env = [
        ("SHIPHAT_REGISTRY_HOST", host),
        ("SHIPHAT_REGISTRY_USERNAME", USER),
        ("SHIPHAT_REGISTRY_PASSWORD", PASSWORD),
    ];
    ok(&w.with_env(&env, &["plugin", "push", echo.to_str().unwrap(), &tag]));
    // Half of them is refused with what is missing.
    let half = w.with_env(
        &[("SHIPHAT_REGISTRY_USERNAME", USER)],
        &["plugin", "pull", &tag],
    );
    assert_ne!(half.code, 0);
    assert!(
        half.stderr.contains("SHIPHAT_REGISTRY_PASSWORD"),
        "{}",
        half.stderr
    );

    // Docker's config.json, as `docker login` writes it.
    let auth = base64_like::encode(&format!("{USER}:{PASSWORD}"));
    w.dir.write(
        "docker/config.json",
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    );
    ok(&w.shiphat(&["plugin", "pull", &tag]));
    let by_tag = w.workflow("private", &tag);
    assert!(logged(ok(&w.run(&by_tag, &[])), "hello from private"));
}

/// The `python3` of the test tools' virtual environment, which has `oras`.
fn python_with_oras() -> PathBuf {
    let python = std::env::var_os("SHIPHAT_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| support::root().join("target/test-tools"))
        .join("venv/bin/python3");
    assert!(
        python.is_file(),
        "{} is missing: the interoperability test needs the `oras` Python SDK; run the suite with `cargo xtask test`, which installs it",
        python.display()
    );
    python
}

fn python(script: &str, args: &[&str]) -> String {
    let output = Command::new(python_with_oras())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn oras_pulls_what_shiphat_pushes_and_shiphat_runs_what_oras_pushes() {
    let registry = Registry::start(false);
    let w = Workspace::new();
    let echo = plugin("echo");
    let target = format!("{}/acme/interop:1", registry.addr);

    ok(&w.shiphat(&[
        "plugin",
        "push",
        echo.to_str().unwrap(),
        &format!("oci://{target}"),
    ]));
    let out = w.dir.path().join("oras-out");
    python(
        "import sys, oras.client\n\
         c = oras.client.OrasClient(insecure=True)\n\
         files = c.pull(target=sys.argv[1], outdir=sys.argv[2])\n\
         print(files)\n",
        &[&target, out.to_str().unwrap()],
    );
    let pulled: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(pulled.len(), 1, "{pulled:?}");
    assert_eq!(
        std::fs::read(&pulled[0]).unwrap(),
        std::fs::read(&echo).unwrap()
    );

    // oras pushes a component in the spec's layout (config and layer media types); shiphat
    // runs it.
    let other = format!("{}/acme/from-oras:1", registry.addr);
    let config = w.dir.write(
        "config.json",
        r#"{"created":"2026-12-03T00:00:00Z","architecture":"wasm","os":"wasip2","layerDigests":[],"component":{"exports":[],"imports":[],"target":null}}"#,
    );
    let copy = w.dir.path().join("echo.wasm");
    std::fs::copy(&echo, &copy).unwrap();
    python(
        "import sys, os, oras.client\n\
         c = oras.client.OrasClient(insecure=True)\n\
         os.chdir(os.path.dirname(sys.argv[2]))\n\
         c.push(target=sys.argv[1], files=[os.path.basename(sys.argv[2]) + ':application/wasm'],\n\
                manifest_config=sys.argv[3] + ':application/vnd.wasm.config.v0+json',\n\
                disable_path_validation=True)\n",
        &[&other, copy.to_str().unwrap(), config.to_str().unwrap()],
    );
    let from_oras = w.workflow("from-oras", &format!("oci://{other}"));
    assert!(logged(ok(&w.run(&from_oras, &[])), "hello from from-oras"));
}

/// A registry is not trusted with memory: a component declared larger than a plugin may be is
/// refused before it is fetched, and one that sends more than its manifest declares is cut
/// off. (A stand-in registry on loopback, since a real one does not lie.)
#[test]
fn a_hostile_registry_cannot_fill_memory_with_a_component() {
    use sha2::{Digest, Sha256};
    let manifest = |size: u64| {
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": format!("sha256:{}", hex::encode(Sha256::digest(b"{}"))), "size": 2},
            "layers": [{"mediaType": "application/wasm", "digest": format!("sha256:{}", "a".repeat(64)), "size": size}]
        })
        .to_string()
    };
    let server = support::http::Server::start(move |request, _| {
        let path = request.path().to_owned();
        let body = if path.contains("/huge/manifests/") {
            manifest(1 << 40)
        } else if path.contains("/liar/manifests/") {
            manifest(10)
        } else if path.contains("/blobs/") {
            "x".repeat(4096)
        } else {
            return support::http::Reply::json(200, &serde_json::json!({}));
        };
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(body.as_bytes())));
        support::http::Reply::new(200, "application/vnd.oci.image.manifest.v1+json", body)
            .header("Docker-Content-Digest", digest)
    });
    let w = Workspace::new();
    let huge = w.shiphat(&[
        "plugin",
        "pull",
        &format!("oci://{}/evil/huge:1", server.host()),
    ]);
    assert_ne!(huge.code, 0);
    assert!(
        huge.stderr.contains("a plugin may be at most"),
        "{}",
        huge.stderr
    );
    assert!(
        !server
            .requests()
            .iter()
            .any(|r| r.path().contains("/blobs/")),
        "the blob was fetched"
    );
    let liar = w.shiphat(&[
        "plugin",
        "pull",
        &format!("oci://{}/evil/liar:1", server.host()),
    ]);
    assert_ne!(liar.code, 0);
    assert!(
        liar.stderr
            .contains("than the 10 bytes its manifest declares"),
        "{}",
        liar.stderr
    );
}
