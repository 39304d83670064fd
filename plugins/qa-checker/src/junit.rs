//! `source: junit`: counts the tests in JUnit XML reports and judges them.
//!
//! Tools disagree on the attributes of `<testsuite>` (jest-junit writes `tests="0"` beside the
//! test case it adds for a suite that failed to run; cargo-nextest leaves ignored tests out of
//! the report altogether), so the counts come from the `<testcase>` elements. Attributes are used only
//! where no element speaks: a suite that reports failures or errors but holds no test case
//! (a suite that failed before any test ran) counts as that many errors, so it is not lost.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use serde_json::{Value, json};
use shiphat_plugin_sdk::{self as sdk, Output, StepError, StepOutput};

use crate::list;

/// The largest report read, 32 MiB. The whole document is held in memory as a tree several
/// times its size, within the plugin's memory limit; a report this big holds hundreds of
/// thousands of tests, so anything larger is more likely a wrong file than a report.
const MAX_REPORT_BYTES: u64 = 32 * 1024 * 1024;

/// How many failing test names go into the `failing` output: enough to start on, few enough
/// that a run with thousands of failures keeps its outputs small.
const MAX_FAILING: usize = 20;

/// How many directory entries one pattern's walk looks at, at most. A `**` pattern over a
/// build directory can meet many files; this bounds the time spent without limiting any
/// realistic reports directory.
const MAX_WALK_ENTRIES: usize = 200_000;

/// How many failing test names the summary shows, so that it stays one readable line.
const SUMMARY_NAMES: usize = 5;

/// The most failures (or errors) a suite's attributes may claim when it holds no test case;
/// a larger claim counts as this many. No suite holds four billion tests, and claims this
/// small cannot overflow the totals' `u64`s however many suites a report holds, where a
/// report's own numbers (say `failures="18446744073709551615"`) could wrap them.
const MAX_SUITE_CLAIM: u64 = u32::MAX as u64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    reports: Vec<String>,
    #[serde(default)]
    max_failures: u64,
    min_pass_rate: Option<f64>,
    max_age: Option<String>,
}

/// What the reports add up to.
#[derive(Default)]
struct Totals {
    tests: u64,
    failures: u64,
    errors: u64,
    skipped: u64,
    /// Failing and erroring tests, in report order, at most [`MAX_FAILING`].
    failing: Vec<String>,
}

impl Totals {
    fn passed(&self) -> u64 {
        self.tests - self.failures - self.errors - self.skipped
    }

    /// passed / (tests - skipped); 0 when no test ran, so that `min_pass_rate` catches a
    /// report that ran nothing.
    fn pass_rate(&self) -> f64 {
        let ran = self.tests - self.skipped;
        if ran == 0 {
            0.0
        } else {
            self.passed() as f64 / ran as f64
        }
    }

    fn fail(&mut self, name: String) {
        if self.failing.len() < MAX_FAILING {
            self.failing.push(name);
        }
    }
}

pub fn run(config: &Config) -> Result<StepOutput, StepError> {
    let max_age = config
        .max_age
        .as_deref()
        .map(|text| {
            humantime::parse_duration(text).map_err(|e| {
                sdk::invalid_config(format!(
                    "`max_age` `{text}` is not a duration ({e}); write it like `30m`, `1h` or `2h 30m`"
                ))
            })
        })
        .transpose()?;

    let files = find(&config.reports)?;
    let mut totals = Totals::default();
    let mut newest: Option<(SystemTime, &Path)> = None;
    for file in &files {
        let modified = read(file, &mut totals)?;
        if let Some(modified) = modified
            && newest.is_none_or(|(t, _)| modified > t)
        {
            newest = Some((modified, file));
        }
    }
    let names: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
    sdk::info(&format!(
        "read {} report(s): {}",
        names.len(),
        list(&names, 10)
    ));

    let pass_rate = totals.pass_rate();
    let outputs = json!({
        "tests": totals.tests,
        "failures": totals.failures,
        "errors": totals.errors,
        "skipped": totals.skipped,
        "pass_rate": pass_rate,
        "failing": totals.failing,
        "reports": names,
    });

    if let Some(max_age) = max_age {
        let Some((modified, file)) = newest else {
            return Err(sdk::failed_with(
                "QA red: cannot tell the reports' age (the host gave no modification time), so `max_age` cannot be checked",
                outputs,
            ));
        };
        // A clock behind the file's time makes the report young, not an error.
        let age = SystemTime::now()
            .duration_since(modified)
            .unwrap_or_default();
        if age > max_age {
            return Err(sdk::failed_with(
                format!(
                    "QA red: the newest report `{}` is {} old, older than `max_age` {}; did the tests run for this build?",
                    file.display(),
                    humantime::format_duration(Duration::from_secs(age.as_secs())),
                    humantime::format_duration(max_age),
                ),
                outputs,
            ));
        }
    }

    let red = totals.failures + totals.errors;
    if red > config.max_failures {
        let allowed = if config.max_failures > 0 {
            format!(", more than `max_failures` {}", config.max_failures)
        } else {
            String::new()
        };
        return Err(sdk::failed_with(
            format!(
                "QA red: {}{allowed} ({})",
                counts(&totals, false),
                list(&totals.failing, SUMMARY_NAMES)
            ),
            outputs,
        ));
    }
    if let Some(min) = config.min_pass_rate
        && pass_rate < min
    {
        return Err(sdk::failed_with(
            format!(
                "QA red: pass rate {} is below `min_pass_rate` {} ({})",
                percent(pass_rate),
                percent(min),
                counts(&totals, true)
            ),
            outputs,
        ));
    }

    let summary = if totals.tests - totals.skipped == 0 {
        format!("QA green, but no test ran: {}", counts(&totals, true))
    } else {
        format!("QA green: {}", counts(&totals, true))
    };
    if totals.tests == totals.skipped {
        sdk::warn("the reports hold no test that ran");
    }
    let Value::Object(outputs) = outputs else {
        unreachable!("built as an object above")
    };
    let mut output = Output::new(summary);
    for (key, value) in outputs {
        output = output.set(key, value);
    }
    Ok(output.into())
}

/// `412 passed, 2 failed, 1 error, 3 skipped`, leaving out the zero counts; with
/// `passed` false, only the red ones.
fn counts(totals: &Totals, passed: bool) -> String {
    let mut parts = Vec::new();
    if passed {
        parts.push(format!("{} passed", totals.passed()));
    }
    if totals.failures > 0 {
        parts.push(format!("{} failed", totals.failures));
    }
    match totals.errors {
        0 => {}
        1 => parts.push("1 error".to_string()),
        n => parts.push(format!("{n} errors")),
    }
    if passed && totals.skipped > 0 {
        parts.push(format!("{} skipped", totals.skipped));
    }
    parts.join(", ")
}

/// A rate as a percentage with at most two decimals: `97.5%`.
fn percent(rate: f64) -> String {
    let text = format!("{:.2}", rate * 100.0);
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// The files the patterns match, each once, sorted.
fn find(patterns: &[String]) -> Result<BTreeSet<PathBuf>, StepError> {
    let mut files = BTreeSet::new();
    for pattern in patterns {
        files.extend(matching(pattern)?);
    }
    if files.is_empty() {
        let patterns: Vec<String> = patterns.iter().map(|p| format!("`{p}`")).collect();
        return Err(sdk::failed(format!(
            "QA red: no report matched {}; did the tests run, and is the reports' directory granted in `allow.read`?",
            patterns.join(", ")
        )));
    }
    Ok(files)
}

/// The files one pattern matches.
///
/// The walk starts at the pattern's longest literal directory, not at its first component as
/// `glob::glob` does: a step granted `target/nextest` sees no `target` directory at all, so a
/// walk from `target` would find nothing. The `glob` crate still does the matching.
fn matching(pattern: &str) -> Result<Vec<PathBuf>, StepError> {
    let compiled = glob::Pattern::new(pattern).map_err(|e| {
        sdk::invalid_config(format!(
            "`reports` pattern `{pattern}` is not a valid glob: {e}"
        ))
    })?;
    let components: Vec<&str> = pattern.split('/').collect();
    let literal = components
        .iter()
        .take_while(|c| !c.contains(['*', '?', '[']))
        .count();
    if literal == components.len() {
        let path = PathBuf::from(pattern);
        return Ok(if path.is_file() {
            vec![path]
        } else {
            Vec::new()
        });
    }
    let base: PathBuf = components[..literal].iter().collect();
    let rest = &components[literal..];
    let depth = if rest.contains(&"**") {
        usize::MAX
    } else {
        rest.len()
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    let mut found = Vec::new();
    let mut budget = MAX_WALK_ENTRIES;
    walk(&base, depth, &mut budget, &mut |path| {
        if compiled.matches_path_with(path, options) {
            found.push(path.to_path_buf());
        }
    });
    if budget == 0 {
        sdk::warn(&format!(
            "`reports` pattern `{pattern}`: stopped after looking at {MAX_WALK_ENTRIES} entries; narrow the pattern"
        ));
    }
    Ok(found)
}

/// Calls `visit` with every file under `dir`, at most `depth` levels down, looking at no more
/// than `budget` entries. `dir` empty means the current directory.
fn walk(dir: &Path, depth: usize, budget: &mut usize, visit: &mut dyn FnMut(&Path)) {
    if depth == 0 {
        return;
    }
    let listed = if dir.as_os_str().is_empty() {
        std::fs::read_dir(".")
    } else {
        std::fs::read_dir(dir)
    };
    let entries = match listed {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        // A directory that cannot be listed hides its reports; say so, and let the other
        // matches (or "no report matched") decide.
        Err(e) => {
            sdk::warn(&format!("cannot list `{}`: {e}", dir.display()));
            return;
        }
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let path = dir.join(entry.file_name());
        // `metadata` follows symbolic links, as a shell's glob does.
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, depth - 1, budget, visit),
            Ok(m) if m.is_file() => visit(&path),
            _ => {}
        }
    }
}

/// Adds one report to `totals`; returns its modification time, when the host tells it.
fn read(file: &Path, totals: &mut Totals) -> Result<Option<SystemTime>, StepError> {
    let shown = file.display();
    let cannot = |e: std::io::Error| sdk::failed(format!("QA red: cannot read `{shown}`: {e}"));
    let metadata = std::fs::metadata(file).map_err(cannot)?;
    if metadata.len() > MAX_REPORT_BYTES {
        return Err(sdk::failed(format!(
            "QA red: `{shown}` is {} bytes, larger than the {MAX_REPORT_BYTES} a report may be; is it a JUnit report?",
            metadata.len()
        )));
    }
    let bytes = std::fs::read(file).map_err(cannot)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        sdk::failed(format!(
            "QA red: `{shown}` is not UTF-8 (invalid byte at offset {}); JUnit reports are UTF-8 XML",
            e.utf8_error().valid_up_to()
        ))
    })?;
    let document = roxmltree::Document::parse(&text).map_err(|e| {
        let (what, row, col) = syntax_error(&e, &text);
        sdk::failed(format!(
            "QA red: `{shown}` is not well-formed XML: {what} at line {row}, column {col}"
        ))
    })?;
    let root = document.root_element();
    if !matches!(root.tag_name().name(), "testsuites" | "testsuite") {
        return Err(sdk::failed(format!(
            "QA red: `{shown}` is not a JUnit report: its root element is `<{}>`, not `<testsuites>` or `<testsuite>`",
            root.tag_name().name()
        )));
    }
    add(root, totals);
    Ok(metadata.modified().ok())
}

/// What went wrong in a parse, and where, as a person counts lines and columns (from 1).
fn syntax_error(e: &roxmltree::Error, text: &str) -> (String, u32, u32) {
    if let roxmltree::Error::UnexpectedEndOfStream | roxmltree::Error::UnclosedRootNode = e {
        // A file cut off inside a tag is `UnexpectedEndOfStream`; one cut off between whole
        // elements is `UnclosedRootNode`. roxmltree gives either the position 1:1, which
        // points at the wrong place; the end of the file is where the trouble is.
        let row = text.lines().count().max(1);
        let col = text.lines().last().map_or(0, |l| l.chars().count()) + 1;
        let (row, col) = if text.ends_with('\n') {
            (row + 1, 1)
        } else {
            (row, col)
        };
        let row = u32::try_from(row).unwrap_or(u32::MAX);
        let col = u32::try_from(col).unwrap_or(u32::MAX);
        return (
            "the file ends inside an element (was it cut off?)".into(),
            row,
            col,
        );
    }
    let pos = e.pos();
    // roxmltree's message ends with ` at ROW:COL`; the position is said once, in words.
    let message = e.to_string();
    let what = message
        .strip_suffix(&format!(" at {pos}"))
        .unwrap_or(&message)
        .to_string();
    (what, pos.row, pos.col)
}

/// Counts every test case under `root`, wherever the tool nested it, and the failures of
/// suites that hold no test case at all.
fn add(root: roxmltree::Node, totals: &mut Totals) {
    for node in root.descendants().filter(|n| n.is_element()) {
        match node.tag_name().name() {
            "testcase" => add_case(node, totals),
            "testsuite" if !node.descendants().any(|n| n.has_tag_name("testcase")) => {
                let count = |name| {
                    node.attribute(name)
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                        .min(MAX_SUITE_CLAIM)
                };
                let red = count("failures") + count("errors");
                if red > 0 {
                    totals.tests = totals.tests.saturating_add(red);
                    totals.errors = totals.errors.saturating_add(red);
                    totals.fail(
                        given(node.attribute("name"))
                            .unwrap_or("(unnamed suite)")
                            .to_string(),
                    );
                }
            }
            _ => {}
        }
    }
}

fn add_case(case: roxmltree::Node, totals: &mut Totals) {
    // Retries leave `<flakyFailure>`/`<rerunFailure>` beside a passing case (nextest,
    // Surefire); only `<failure>` and `<error>` make a case red. A case with both is one
    // failure. (pytest writes a failing call plus a failing teardown as two cases, one with
    // each, which count as one failure and one error.)
    let has = |name: &str| case.children().any(|c| c.has_tag_name(name));
    totals.tests += 1;
    if has("failure") {
        totals.failures += 1;
        totals.fail(case_name(case));
    } else if has("error") {
        totals.errors += 1;
        totals.fail(case_name(case));
    } else if has("skipped") || not_run(case) {
        totals.skipped += 1;
    }
}

/// Whether a case says it did not run. googletest writes a disabled test as
/// `status="notrun"` with no `<skipped>`, and CTest writes `notrun` or `disabled`; such a test
/// is not a pass, and counting it as one would raise `pass_rate`. googletest's own totals and
/// publish-unit-test-result-action count it as skipped; Jenkins, which looks only for
/// `<skipped>`, as passed.
fn not_run(case: roxmltree::Node) -> bool {
    case.attribute("status").is_some_and(|status| {
        let status = status.trim();
        status.eq_ignore_ascii_case("notrun") || status.eq_ignore_ascii_case("disabled")
    })
}

/// `classname::name`, or the name alone where the class adds nothing (jest-junit writes the
/// same text in both by default).
///
/// A test case without a name stands for a failure outside any test: Surefire writes one for
/// a JUnit 5 `@BeforeAll` that failed, googletest one for a failure outside any test (in a
/// suite it calls `NonTestSuiteFailure`). It is named after what there is, its class, its
/// suite or its file, so that `failing` shows neither `Class::` nor an empty string.
fn case_name(case: roxmltree::Node) -> String {
    let class = given(case.attribute("classname"));
    let Some(name) = given(case.attribute("name")) else {
        let suite = case
            .ancestors()
            .find(|n| n.has_tag_name("testsuite"))
            .and_then(|suite| given(suite.attribute("name")));
        return class
            .or(suite)
            .or_else(|| given(case.attribute("file")))
            .unwrap_or("(unnamed test)")
            .to_string();
    };
    match class {
        Some(class) if class != name => format!("{class}::{name}"),
        _ => name.to_string(),
    }
}

/// An attribute's value, unless it is missing or blank.
fn given(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    //! Native property tests of the report reader: reports are whatever the tests (or whoever
    //! can write to the reports' directory) left there.

    use std::time::Instant;

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use shiphat_proptest::{CASE_TIME, config};

    use super::*;

    /// The real reports in tests/fixtures/junit, as tools write them.
    const FIXTURES: &[&str] = &[
        include_str!("../../../tests/fixtures/junit/googletest.xml"),
        include_str!("../../../tests/fixtures/junit/jest-junit.xml"),
        include_str!("../../../tests/fixtures/junit/jest-junit-red.xml"),
        include_str!("../../../tests/fixtures/junit/pytest.xml"),
        include_str!(
            "../../../tests/fixtures/junit/surefire-reports/TEST-com.example.shop.api.LoginTest.xml"
        ),
        include_str!(
            "../../../tests/fixtures/junit/surefire-reports/TEST-com.example.shop.cart.CartServiceTest.xml"
        ),
    ];

    /// Reads `text` as `read` does after the file is loaded, checks the totals' invariants
    /// and returns them (`None` when the text is not a JUnit report).
    fn totals_of(text: &str) -> Result<Option<Totals>, TestCaseError> {
        let start = Instant::now();
        let totals = match roxmltree::Document::parse(text) {
            Ok(document) => {
                let root = document.root_element();
                if matches!(root.tag_name().name(), "testsuites" | "testsuite") {
                    let mut totals = Totals::default();
                    add(root, &mut totals);
                    Some(totals)
                } else {
                    None
                }
            }
            Err(e) => {
                let (what, row, col) = syntax_error(&e, text);
                prop_assert!(!what.is_empty() && row >= 1 && col >= 1);
                None
            }
        };
        if let Some(t) = &totals {
            let red = t.failures.checked_add(t.errors);
            let counted = red.and_then(|r| r.checked_add(t.skipped));
            prop_assert!(
                counted.is_some_and(|c| c <= t.tests),
                "{} failures, {} errors and {} skipped of {} tests",
                t.failures,
                t.errors,
                t.skipped,
                t.tests
            );
            let rate = t.pass_rate();
            prop_assert!((0.0..=1.0).contains(&rate), "pass rate {rate}");
            prop_assert!(t.failing.len() <= MAX_FAILING);
            let _ = (counts(t, true), percent(rate));
        }
        let took = start.elapsed();
        prop_assert!(took < CASE_TIME, "took {took:?}");
        Ok(totals)
    }

    /// Pieces of JUnit XML, valid and not, for XML-ish soup.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "<testsuites>", "</testsuites>", "<testsuite>", "</testsuite>",
                "<testsuite name=\"s\" tests=\"3\" failures=\"2\" errors=\"1\">",
                "<testsuite failures=\"18446744073709551615\" errors=\"18446744073709551615\"/>",
                "<testsuite failures=\"-1\" errors=\" 7 \"/>", "<testsuite failures=\"1e9\"/>",
                "<testcase name=\"t\" classname=\"c\">", "<testcase/>", "</testcase>",
                "<testcase name=\"t\" classname=\"t\"/>", "<failure/>", "<failure>boom</failure>",
                "<error/>", "<skipped/>", "<flakyFailure/>", "<rerunFailure/>", "<system-out>",
                "</system-out>", "<properties><property name=\"a\" value=\"b\"/></properties>",
                "<?xml version=\"1.0\"?>", "<!-- c -->", "<![CDATA[ <testcase/> ]]>", "&amp;",
                "&lt;", "&#10;", "&#0;", "&#x110000;", "&bogus;", "<!DOCTYPE x>",
                "<!DOCTYPE x [<!ENTITY a \"&#60;testcase/&#62;\">]>", "&a;", "<", ">", "\"", "=",
                "\n", " ", "<a:testcase xmlns:a=\"u\"/>",
            ])
            .prop_map(str::to_string),
            1 => ".{0,8}",
        ]
    }

    /// How a test case ends, for reports generated with known counts.
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Outcome {
        Pass,
        Fail,
        Error,
        FailAndError,
        Skip,
        Flaky,
        /// googletest's disabled test: `status="notrun"`, no `<skipped>`.
        NotRun,
    }

    fn case_xml(name: &str, outcome: Outcome) -> String {
        let body = match outcome {
            Outcome::Pass => "",
            Outcome::Fail => "<failure message=\"x\">trace</failure>",
            Outcome::Error => "<error>trace</error>",
            Outcome::FailAndError => "<failure/><error/>",
            Outcome::Skip => "<skipped/>",
            Outcome::Flaky => "<flakyFailure/><system-out>x</system-out>",
            Outcome::NotRun => {
                return format!("<testcase classname=\"k\" name=\"{name}\" status=\"notrun\"/>");
            }
        };
        format!("<testcase classname=\"k\" name=\"{name}\">{body}</testcase>")
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any text: no panic, quick, and totals that add up.
        #[test]
        fn any_text_is_read_quickly_and_adds_up(text in "(?s).{0,300}") {
            totals_of(&text)?;
        }

        /// Soup of JUnit elements, entities and attributes (including counts that overflow a
        /// `u64` when added): no panic, quick, and totals that add up.
        #[test]
        fn junit_soup_is_read_quickly_and_adds_up(
            pieces in prop::collection::vec(piece(), 0..60),
            wrap in any::<bool>(),
        ) {
            let mut text = pieces.concat();
            if wrap {
                text = format!("<testsuites>{text}</testsuites>");
            }
            totals_of(&text)?;
        }

        /// The real reports with a slice removed, duplicated or replaced by a piece of JUnit:
        /// no panic, quick, and totals that add up.
        #[test]
        fn mutated_real_reports_are_read_quickly_and_add_up(
            which in 0..FIXTURES.len(),
            at in any::<prop::sample::Index>(),
            len in 0usize..200,
            how in 0u8..3,
            insert in piece(),
        ) {
            let original = FIXTURES[which];
            let mut start = at.index(original.len());
            while !original.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = (start + len).min(original.len());
            while !original.is_char_boundary(end) {
                end -= 1;
            }
            let (head, cut, tail) = (&original[..start], &original[start..end], &original[end..]);
            let text = match how {
                0 => format!("{head}{tail}"),
                1 => format!("{head}{cut}{cut}{tail}"),
                _ => format!("{head}{insert}{tail}"),
            };
            totals_of(&text)?;
        }

        /// Reports generated with known outcomes, in suites nested as tools nest them, count
        /// exactly those outcomes.
        #[test]
        fn generated_reports_count_what_they_hold(
            suites in prop::collection::vec(
                prop::collection::vec(
                    prop::sample::select(vec![
                        Outcome::Pass, Outcome::Fail, Outcome::Error, Outcome::FailAndError,
                        Outcome::Skip, Outcome::Flaky, Outcome::NotRun,
                    ]),
                    0..8,
                ),
                0..5,
            ),
            lying_attributes in any::<bool>(),
        ) {
            let mut text = String::from("<?xml version=\"1.0\"?><testsuites>");
            let mut want = (0u64, 0u64, 0u64, 0u64);
            for (i, cases) in suites.iter().enumerate() {
                // Attributes that disagree with the elements must not matter while the suite
                // holds test cases.
                let attributes = if lying_attributes { " tests=\"0\" failures=\"9\"" } else { "" };
                text.push_str(&format!("<testsuite name=\"s{i}\"{attributes}>"));
                for (j, &outcome) in cases.iter().enumerate() {
                    text.push_str(&case_xml(&format!("t{j}"), outcome));
                    want.0 += 1;
                    match outcome {
                        Outcome::Fail | Outcome::FailAndError => want.1 += 1,
                        Outcome::Error => want.2 += 1,
                        Outcome::Skip | Outcome::NotRun => want.3 += 1,
                        Outcome::Pass | Outcome::Flaky => {}
                    }
                }
                if cases.is_empty() && lying_attributes {
                    // A suite that failed before any test ran counts its claimed failures.
                    want.0 += 9;
                    want.2 += 9;
                }
                text.push_str("</testsuite>");
            }
            text.push_str("</testsuites>");
            let t = totals_of(&text)?.expect("a generated report is a report");
            prop_assert_eq!((t.tests, t.failures, t.errors, t.skipped), want);
        }
    }

    // A report cut off between whole elements (roxmltree's `UnclosedRootNode`) was said to
    // fail "at line 1, column 1", the position roxmltree gives, not where the file ends.
    #[test]
    fn a_report_cut_off_between_elements_names_where_it_ends() {
        let whole_lines = concat!(
            "<?xml version=\"1.0\"?>\n",
            "<testsuites>\n",
            "  <testsuite name=\"a\">\n",
            "    <testcase name=\"b\"/>\n",
        );
        let mid_line = whole_lines.trim_end();
        let inside_a_tag = "<testsuites>\n  <testsuite name=\"a\">\n    <testcase name=\"b";
        for (text, row, col) in [
            (whole_lines, 5, 1),
            (mid_line, 4, 25),
            (inside_a_tag, 3, 22),
        ] {
            let e = roxmltree::Document::parse(text).unwrap_err();
            assert_eq!(
                syntax_error(&e, text),
                (
                    "the file ends inside an element (was it cut off?)".to_string(),
                    row,
                    col
                ),
                "{e:?} for {text:?}"
            );
        }
    }

    // A test case with an empty name (Surefire's for a failed JUnit 5 `@BeforeAll`,
    // googletest's for a failure outside any test) showed in `failing` as `Class::` or as an
    // empty string.
    #[test]
    fn a_test_with_an_empty_name_is_named_after_what_there_is() {
        let text = concat!(
            "<testsuites>",
            // Surefire, a JUnit 5 class whose `@BeforeAll` threw.
            "<testsuite name=\"com.example.RepoTest\" tests=\"1\" errors=\"1\">",
            "<testcase name=\"\" classname=\"com.example.RepoTest\" time=\"0.1\">",
            "<error message=\"db down\" type=\"java.lang.IllegalStateException\"/></testcase>",
            "</testsuite>",
            // googletest, a failure outside any test.
            "<testsuite name=\"NonTestSuiteFailure\" tests=\"1\" failures=\"1\">",
            "<testcase name=\"\" status=\"run\" result=\"completed\" classname=\"\">",
            "<failure message=\"x\" type=\"\"/></testcase>",
            "</testsuite>",
            // Only a file to go by, then nothing at all.
            "<testsuite name=\" \">",
            "<testcase name=\" \" file=\"tests/boot.test.ts\"><failure/></testcase>",
            "<testcase><failure/></testcase>",
            "</testsuite>",
            "<testsuite name=\"\" errors=\"1\"/>",
            "</testsuites>"
        );
        let t = totals_of(text).unwrap().unwrap();
        assert_eq!(
            t.failing,
            [
                "com.example.RepoTest",
                "NonTestSuiteFailure",
                "tests/boot.test.ts",
                "(unnamed test)",
                "(unnamed suite)",
            ]
        );
    }

    // googletest's disabled tests (`status="notrun"`, no `<skipped>`) counted as passed,
    // which raised `pass_rate` past a `min_pass_rate` the tests that ran did not reach.
    #[test]
    fn tests_that_did_not_run_are_skipped_not_passed() {
        let googletest = FIXTURES[0];
        assert!(
            googletest.contains("name=\"AllTests\""),
            "FIXTURES[0] is googletest.xml"
        );
        let t = totals_of(googletest).unwrap().unwrap();
        let counts = (t.tests, t.failures, t.errors, t.skipped, t.passed());
        assert_eq!(counts, (7, 1, 0, 3, 3));
        assert_eq!(t.pass_rate(), 0.75);
    }

    // The README said pytest writes a failing call plus a failing teardown as one case with
    // both `<failure>` and `<error>`; it writes two cases, as here, and each counts.
    #[test]
    fn a_pytest_call_and_teardown_failure_are_two_cases() {
        let text = concat!(
            "<testsuites name=\"pytest tests\">",
            "<testsuite name=\"pytest\" errors=\"1\" failures=\"1\" skipped=\"0\" tests=\"1\">",
            "<testcase classname=\"tests.test_db\" name=\"test_write\" time=\"0.003\">",
            "<failure message=\"assert 1 == 2\">def test_write(): ...</failure></testcase>",
            "<testcase classname=\"tests.test_db\" name=\"test_write\" time=\"0.001\">",
            "<error message=\"failed on teardown with &quot;RuntimeError&quot;\">...</error>",
            "</testcase></testsuite></testsuites>"
        );
        let t = totals_of(text).unwrap().unwrap();
        assert_eq!((t.tests, t.failures, t.errors), (2, 1, 1));
        assert_eq!(t.failing, ["tests.test_db::test_write"; 2]);
    }

    // A suite without test cases whose `failures` and `errors` add up past `u64::MAX` made
    // the sum overflow: a panic in a debug build, and in the release component a wrapped sum
    // that could turn a red report green.
    #[test]
    fn suite_counts_past_u64_max_do_not_overflow() {
        let text = concat!(
            "<testsuites>",
            "<testsuite name=\"a\" failures=\"18446744073709551615\" errors=\"1\"/>",
            "<testsuite name=\"b\" failures=\"18446744073709551615\"/>",
            "<testsuite><testcase name=\"ok\"/></testsuite>",
            "</testsuites>"
        );
        let t = totals_of(text).unwrap().unwrap();
        assert!(t.errors >= MAX_SUITE_CLAIM, "{} errors", t.errors);
        assert_eq!(t.passed(), 1);
    }
}
