//! shiphat's `${{ }}` expressions behave exactly as GitHub Actions' do (issue 14), shown case
//! by case through the real binary: each case is read as a step's output value and as a
//! step's `if:` (see `tests/support/expressions.rs` for how).
//!
//! The cases are ours, one file per topic in `tests/fixtures/expressions/`, written from
//! GitHub's documentation and test data (which we read but do not copy). A file is a YAML
//! list of cases:
//!
//! ```yaml
//! - expr: inputs.environment == 'Production'    # the expression, without `${{ }}`
//!   contexts: {inputs: {environment: production}} # optional: the named-values it may read
//!   value: true                                 # what GitHub Actions makes of it
//! - expr: 1 = 2
//!   error: refused                              # or `fails`
//! ```
//!
//! `value` is any YAML value, compared by kind and value (numbers numerically). `error:
//! refused` is GitHub's lexing or parsing error: `shiphat run` must refuse the file before
//! anything runs. `error: fails` is GitHub's evaluation error: the step reading the expression
//! must fail. Each case has exactly one of `value` and `error`.
//!
//! Each case was checked against GitHub's reference evaluator (the TypeScript one of
//! actions/languageservices) when it was written, so a failure here is shiphat's, not the
//! case's. Run with `cargo xtask test --test expressions`. The same harness runs GitHub's own
//! test data: `cargo xtask expr-conformance DIR`.

mod support;

use std::sync::OnceLock;

use serde_json::{Map, Value};
use support::expressions::{self, Case, Expect, Shiphat};

fn fixtures() -> std::path::PathBuf {
    support::root().join("tests/fixtures/expressions")
}

fn shiphat() -> &'static Shiphat {
    static SHIPHAT: OnceLock<Shiphat> = OnceLock::new();
    SHIPHAT.get_or_init(|| Shiphat {
        binary: env!("CARGO_BIN_EXE_shiphat").into(),
        plugin_path: support::plugins_dir().to_owned(),
        cache_dir: support::shared_cache().to_owned(),
    })
}

/// Reads one case of a topic file; panics naming the case when it is malformed.
fn case(file: &str, number: usize, entry: Value) -> Case {
    let label = format!("{file} #{number}");
    let Value::Object(mut entry) = entry else {
        panic!("{label}: a case is a map with `expr` and `value` or `error`");
    };
    if let Some(key) = entry
        .keys()
        .find(|k| !["expr", "contexts", "value", "error"].contains(&k.as_str()))
    {
        panic!("{label}: unknown key `{key}`; a case has `expr`, `contexts`, `value`, `error`");
    }
    let Some(Value::String(expr)) = entry.remove("expr") else {
        panic!("{label}: `expr` must be a string");
    };
    let contexts = match entry.remove("contexts") {
        None => Map::new(),
        Some(Value::Object(contexts)) => contexts,
        Some(_) => panic!("{label}: `contexts` must be a map of names to values"),
    };
    let expect = match (entry.remove("value"), entry.remove("error")) {
        (Some(value), None) => Expect::Value(value),
        (None, Some(error)) if error == "refused" => Expect::Refused,
        (None, Some(error)) if error == "fails" => Expect::Fails,
        (None, Some(error)) => panic!("{label}: `error` is `refused` or `fails`, not {error}"),
        _ => panic!("{label}: a case has exactly one of `value` and `error`"),
    };
    Case {
        label,
        expr,
        contexts,
        expect,
    }
}

fn load(topic: &str) -> Vec<Case> {
    let file = format!("{topic}.yaml");
    let text = std::fs::read_to_string(fixtures().join(&file))
        .unwrap_or_else(|e| panic!("cannot read tests/fixtures/expressions/{file}: {e}"));
    let entries: Vec<Value> = serde_yaml::from_str(&text)
        .unwrap_or_else(|e| panic!("tests/fixtures/expressions/{file} is not a list: {e}"));
    assert!(!entries.is_empty(), "{file} has no cases");
    entries
        .into_iter()
        .enumerate()
        .map(|(n, entry)| case(&file, n + 1, entry))
        .collect()
}

/// Runs a topic's cases and fails listing every case where shiphat and GitHub disagree.
fn check(topic: &str) {
    let cases = load(topic);
    let verdicts = expressions::run_cases(shiphat(), &cases);
    let table = expressions::table(&[(topic, &verdicts)]);
    println!("{table}");
    let disagreements = expressions::disagreements(&cases, &verdicts);
    assert!(
        disagreements.is_empty(),
        "shiphat disagrees with GitHub Actions on {} of {} cases of {topic}.yaml:\n{table}\n{disagreements}",
        verdicts.iter().filter(|v| !v.agrees()).count(),
        cases.len(),
    );
}

// A topic file without a test would never run, and a test without a file would fail
// confusingly: the list and the folder must match.
#[test]
fn every_fixture_file_has_a_test() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures())
        .expect("tests/fixtures/expressions")
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut topics: Vec<String> = TOPICS.iter().map(|t| format!("{t}.yaml")).collect();
    topics.sort();
    assert_eq!(files, topics);
}

// The harness must rewrite context names, and only them, or every case would test the
// rewriting instead of the engine.
#[test]
fn only_context_names_are_rewritten_to_step_outputs() {
    let contexts: Map<String, Value> =
        serde_json::from_str(r#"{"simPLE": {}, "inputs": {}, "format": 1}"#).unwrap();
    let cases = [
        ("SIMple.TEst", "steps.c.outputs.SIMple.TEst"),
        (
            "inputs.version || 'inputs.version'",
            "steps.c.outputs.inputs.version || 'inputs.version'",
        ),
        (
            "'it''s inputs' == inputs",
            "'it''s inputs' == steps.c.outputs.inputs",
        ),
        (
            "format('{0}', format)",
            "format('{0}', steps.c.outputs.format)",
        ),
        (
            "simple.inputs[inputs.x]",
            "steps.c.outputs.simple.inputs[steps.c.outputs.inputs.x]",
        ),
        (
            "true && NaN || Infinity > null",
            "true && NaN || Infinity > null",
        ),
        ("1e2 + 0xff -Infinity .5", "1e2 + 0xff -Infinity .5"),
        ("env.HOME", "unknown_context_env.HOME"),
        ("github/workflow.md", "github/workflow.md"),
        ("inputs.*.name", "steps.c.outputs.inputs.*.name"),
    ];
    for (expr, rewritten) in cases {
        assert_eq!(
            expressions::rewrite(expr, &contexts, "c"),
            rewritten,
            "{expr}"
        );
    }
    // A chain as long as GitHub's depth limit is read from a group, which the limit counts
    // apart, so the three levels the rewriting adds do not count against it.
    let chain = format!("{}[0] .*['x[]']", ".a".repeat(37));
    assert_eq!(
        expressions::rewrite(&format!("simple{chain} == inputs{chain}"), &contexts, "c"),
        format!("(steps.c.outputs.simple){chain} == (steps.c.outputs.inputs){chain}")
    );
    let short = ".a".repeat(39);
    assert_eq!(
        expressions::rewrite(&format!("simple{short}"), &contexts, "c"),
        format!("steps.c.outputs.simple{short}")
    );
}

// A harness that agreed with everything would prove nothing: a wrong expectation must show
// as a disagreement, each way.
#[test]
fn a_wrong_expectation_is_reported_as_a_disagreement() {
    let case = |expr: &str, expect: Expect| Case {
        label: "harness".into(),
        expr: expr.into(),
        contexts: Map::new(),
        expect,
    };
    let cases = [
        case("true", Expect::Value(Value::Bool(true))),
        case("1 = 2", Expect::Refused),
        case("true", Expect::Value(Value::Bool(false))),
        case("true", Expect::Value(Value::String("true".into()))),
        case("true", Expect::Refused),
        case("1 = 2", Expect::Value(Value::Bool(false))),
    ];
    let verdicts = expressions::run_cases(shiphat(), &cases);
    let got: Vec<(bool, bool)> = verdicts
        .iter()
        .map(|v| (v.value_agrees, v.if_agrees))
        .collect();
    assert_eq!(
        got,
        [
            (true, true),
            (true, true),
            (false, false),
            (false, true),
            (false, false),
            (false, false)
        ],
        "{}",
        expressions::disagreements(&cases, &verdicts)
    );
}

/// One test per topic file, named after what issue 14 found wrong with it, and `TOPICS`, the
/// list `every_fixture_file_has_a_test` holds against the folder: one list, so neither can
/// drift from the other.
macro_rules! topics {
    ($($test:ident => $topic:literal,)*) => {
        const TOPICS: &[&str] = &[$($topic),*];
        $(
            #[test]
            fn $test() {
                check($topic);
            }
        )*
    };
}

topics! {
    // Issue 14: `0xff`, `1e2`, `.5`, `NaN` and `Infinity` were refused, and `'it''s'` and
    // `'C:\temp'` were read with backslash escapes instead of GitHub's doubled quote.
    literals_are_read_as_github_reads_them => "literals",
    // Issue 14: `==` refused a string against a number instead of comparing both as numbers.
    equality_coerces_as_github_does => "equality_and_coercion",
    // Issue 14: `<` and `>` failed across types instead of comparing as numbers, and compared
    // strings case-sensitively.
    ordering_coerces_and_ignores_case_as_github_does => "ordering",
    // Issue 14: `'Production' == 'production'` was false and `inputs.ENVIRONMENT` was null.
    strings_and_property_names_ignore_case => "case_insensitivity",
    // Issue 14: empty objects and arrays were false; GitHub holds every object true.
    truthiness_matches_github => "truthiness",
    // Issue 14: `&&` and `||` returned booleans, so `inputs.version || 'latest'` was `true`.
    and_and_or_return_an_operand => "logical",
    // Issue 14: index coercion, out-of-range indexes and the `.*` filter did not exist.
    property_access_and_filters_match_github => "property_access",
    // Issue 14: no functions: `contains(inputs.tags, 'canary')` was refused.
    contains_matches_github => "contains",
    // Issue 14: no functions: `startsWith(inputs.ref, 'refs/tags/')` was refused.
    starts_with_matches_github => "starts_with",
    // Issue 14: no functions: `endsWith(inputs.artifact, '.tar.gz')` was refused.
    ends_with_matches_github => "ends_with",
    // Issue 14: no functions: `format('web-{0}', inputs.release)` was refused.
    format_matches_github => "format",
    // Issue 14: no functions: `join(inputs.hosts, ', ')` was refused.
    join_matches_github => "join",
    // Issue 14: no functions: `toJSON(inputs.target)` was refused.
    to_json_matches_github => "to_json",
    // Issue 14: no functions: `fromJSON(inputs.matrix)` was refused.
    from_json_matches_github => "from_json",
    // Issue 14: no functions: `case(inputs.environment == 'production', 3, 1)` was refused.
    case_matches_github => "case",
    // Issue 14: the depth limit was shiphat's own 100 levels, not GitHub's 50.
    depth_limit_is_githubs => "depth_limit",
    // Issue 14: double-quoted strings were accepted, though GitHub has only single quotes.
    syntax_errors_are_refused_as_github_refuses_them => "syntax_errors",
    // Issue 14: each of the cases the issue names flipped an `if:`, failed a run or was
    // refused.
    the_cases_issue_14_names_mean_what_they_mean_in_github => "deploy_habits",
}
