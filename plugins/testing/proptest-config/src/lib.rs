//! What the plugins' native property tests share: how many cases a property runs, and how
//! long one case may take. Nothing here is built into a plugin; for wasm32 the crate is empty.

#![cfg(not(target_family = "wasm"))]

use std::time::{Duration, Instant};

use proptest::prop_assert;
use proptest::test_runner::{Config, TestCaseError};

/// The most one case may take. A report, a page, a condition or an entry name of a few
/// kilobytes is handled in microseconds; a second leaves room for a loaded machine and a debug
/// build, and still catches a blow-up an attacker could aim at.
pub const CASE_TIME: Duration = Duration::from_secs(1);

/// `cases` cases, unless `PROPTEST_CASES` asks for another number (the long runs of
/// docs/security-testing.md). Failures are not persisted to files: a failure found becomes a
/// named regression test instead.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Runs `f`, failing the case when it took longer than [`CASE_TIME`].
pub fn timed<T>(f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    prop_assert!(took < CASE_TIME, "took {took:?}");
    Ok(out)
}
