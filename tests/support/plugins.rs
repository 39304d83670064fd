//! The repository root, the built plugins and a compile cache, for every test binary that runs
//! real components: the integration tests here (through `support`) and the runner's own tests
//! (`engine/runner/tests/runs.rs`, which includes this file by path). It uses nothing beyond
//! std and `tempfile`, so a crate's tests can take it without the rest of `support`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository root. Every crate that includes this file sits two levels below it.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root")
}

/// The directory the plugins are built into. Builds them the first time it is asked for, in
/// each test binary; cargo makes the later builds no-ops.
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("plugins/Cargo.toml"))
            .arg("--target-dir")
            .arg(root.join("plugins/target"))
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("cannot run cargo to build the plugins");
        assert!(
            output.status.success(),
            "building the plugins failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`, or run the suite with `cargo xtask test`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        root.join("plugins/target/wasm32-wasip2/release")
    })
}

/// The path of a built plugin, by crate name.
pub fn plugin(name: &str) -> PathBuf {
    plugins_dir().join(format!("{}.wasm", name.replace('-', "_")))
}

/// A compile cache shared by the tests of one binary, so each plugin compiles once.
pub fn shared_cache() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("a temporary directory"))
        .path()
}
