//! The `${{ }}` language, evaluated against a small fixed scope: GitHub Actions' meaning, case
//! by case. The same cases run through the real binary in `tests/expressions.rs`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use shiphat_workflow::{Expr, MAX_EXPR_DEPTH, MAX_EXPR_LENGTH, Scope, Status, StepState, Template};

struct Fixture {
    inputs: Map<String, Value>,
    env: Map<String, Value>,
    steps: BTreeMap<String, StepState>,
}

fn fixture() -> Fixture {
    let obj = |v: Value| v.as_object().unwrap().clone();
    let mut steps = BTreeMap::new();
    steps.insert(
        "build".to_string(),
        StepState {
            status: "succeeded".into(),
            outputs: obj(json!({
                "url": "https://x.test",
                "count": 3,
                "nested": {"a": {"b": [10, 20]}},
                "site-url": "https://site.test",
                "empty": "",
            })),
        },
    );
    steps.insert(
        "qa".to_string(),
        StepState {
            status: "failed".into(),
            outputs: Map::new(),
        },
    );
    Fixture {
        inputs: obj(json!({"version": "1.2", "keep": 5, "dry_run": false, "none": null})),
        env: obj(json!({"REGION": "eu"})),
        steps,
    }
}

/// Calls `f` with the fixture's scope.
fn in_scope<T>(f: impl FnOnce(&Scope) -> T) -> T {
    let fx = fixture();
    f(&Scope {
        inputs: &fx.inputs,
        env: &fx.env,
        steps: &fx.steps,
        run_id: "run-42",
        dry_run: false,
    })
}

fn eval(src: &str) -> Value {
    let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    in_scope(|scope| e.eval(scope)).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn template(src: &str) -> Value {
    let t = Template::parse(src).unwrap();
    in_scope(|scope| t.eval(scope)).unwrap()
}

fn eval_err(src: &str) -> String {
    let e = Expr::parse(src).unwrap_or_else(|e| panic!("{src}: {e}"));
    in_scope(|scope| e.eval(scope)).expect_err(src).to_string()
}

#[test]
fn literals_and_paths() {
    assert_eq!(eval("'a b'"), json!("a b"));
    assert_eq!(eval("'it''s'"), json!("it's"));
    assert_eq!(eval(r"'C:\temp\new'"), json!(r"C:\temp\new"));
    assert_eq!(eval("42"), json!(42));
    assert_eq!(eval("-1.5"), json!(-1.5));
    for (src, n) in [
        (".5", 0.5),
        ("+1", 1.0),
        ("0xff", 255.0),
        ("0o7", 7.0),
        ("1e2", 100.0),
    ] {
        assert_eq!(eval(src).as_f64(), Some(n), "{src}");
    }
    assert_eq!(eval("NaN"), json!(null), "NaN has no JSON form");
    assert_eq!(eval("true"), json!(true));
    assert_eq!(eval("null"), json!(null));
    assert_eq!(eval("inputs.version"), json!("1.2"));
    assert_eq!(eval("env.REGION"), json!("eu"));
    assert_eq!(eval("run.id"), json!("run-42"));
    assert_eq!(eval("steps.qa.status"), json!("failed"));
    assert_eq!(eval("steps.build.outputs.url"), json!("https://x.test"));
}

#[test]
fn names_are_matched_without_regard_to_case() {
    assert_eq!(eval("INPUTS.Version"), json!("1.2"));
    assert_eq!(eval("Steps.BUILD.Outputs.URL"), json!("https://x.test"));
    assert_eq!(
        eval("steps.build.outputs['SITE-URL']"),
        json!("https://site.test")
    );
    assert_eq!(eval("Run.ID"), json!("run-42"));
    assert_eq!(eval("CONTAINS('abc', 'B')"), json!(true));
}

#[test]
fn indexing() {
    assert_eq!(eval("steps.build.outputs.nested.a.b[1]"), json!(20));
    assert_eq!(
        eval("steps.build.outputs['site-url']"),
        json!("https://site.test")
    );
    assert_eq!(eval("steps.build.outputs['nested']['a'].b[0]"), json!(10));
    assert_eq!(eval("steps.build.outputs.nested.a.b['1']"), json!(20));
    assert_eq!(eval("steps.build.outputs.nested.a.b[1.9]"), json!(20));
    assert_eq!(eval("steps.build.outputs.nested.a.b[true]"), json!(20));
    assert_eq!(eval("fromJSON('[\"x\", \"y\"]')[1]"), json!("y"));
}

#[test]
fn the_star_filter_maps_over_arrays_and_objects() {
    assert_eq!(eval("steps.*.status"), json!(["succeeded", "failed"]));
    assert_eq!(eval("steps.build.outputs.nested.*.b"), json!([[10, 20]]));
    assert_eq!(eval("steps.build.outputs.nested.a.b[*]"), json!([10, 20]));
    assert_eq!(
        eval("inputs.version.*"),
        json!([]),
        "a string has nothing to filter"
    );
    assert_eq!(
        eval("fromJSON('[{\"n\": 1}, {\"m\": 2}, {\"n\": 3}]').*.n"),
        json!([1, 3])
    );
}

#[test]
fn missing_values_are_null() {
    assert_eq!(eval("steps.build.outputs.nope"), json!(null));
    assert_eq!(eval("steps.build.outputs.nested.x.y"), json!(null));
    assert_eq!(eval("steps.build.outputs.nested.a.b[9]"), json!(null));
    assert_eq!(eval("steps.build.outputs.nested.a.b[-1]"), json!(null));
    assert_eq!(eval("steps.skipped_one.outputs.x"), json!(null));
    assert_eq!(eval("inputs.unset"), json!(null));
}

#[test]
fn equality_converts_as_github_does() {
    assert_eq!(eval("inputs.keep == 5"), json!(true));
    assert_eq!(
        eval("inputs.keep == '5'"),
        json!(true),
        "number and string: as numbers"
    );
    assert_eq!(eval("inputs.keep == ' 0x05 '"), json!(true));
    assert_eq!(eval("null == 0"), json!(true));
    assert_eq!(eval("true == 1"), json!(true));
    assert_eq!(eval("'' == false"), json!(true));
    assert_eq!(eval("null == ''"), json!(true));
    assert_eq!(
        eval("inputs.none != ''"),
        json!(false),
        "a missing value equals ''"
    );
    assert_eq!(eval("'Production' == 'production'"), json!(true));
    assert_eq!(eval("'ς' == 'Σ'"), json!(true));
    assert_eq!(eval("'ı' == 'I'"), json!(false), "the dotless i is not I");
    assert_eq!(eval("NaN == NaN"), json!(false));
    assert_eq!(eval("'abc' == 1"), json!(false));
    // Objects and arrays are equal only to themselves.
    assert_eq!(
        eval("steps.build.outputs.nested == steps.build.outputs.nested"),
        json!(true)
    );
    assert_eq!(eval("fromJSON('{}') == fromJSON('{}')"), json!(false));
    assert_eq!(eval("fromJSON('[]') == ''"), json!(false));
    assert_eq!(eval("steps.qa.status == 'FAILED'"), json!(true));
}

#[test]
fn ordering_converts_as_github_does() {
    assert_eq!(eval("inputs.keep > 4"), json!(true));
    assert_eq!(eval("inputs.keep >= 5"), json!(true));
    assert_eq!(eval("inputs.keep < 5"), json!(false));
    assert_eq!(eval("inputs.keep <= 5"), json!(true));
    assert_eq!(
        eval("'95' >= 90"),
        json!(true),
        "a string and a number order as numbers"
    );
    assert_eq!(eval("'10' < '9'"), json!(true), "two strings order as text");
    assert_eq!(eval("'abc' < 'ABD'"), json!(true), "without regard to case");
    assert_eq!(eval("'a' < 1"), json!(false), "NaN orders with nothing");
    assert_eq!(eval("'a' >= 1"), json!(false));
    assert_eq!(eval("true > false"), json!(true));
    assert_eq!(eval("null < 1"), json!(true));
    assert_eq!(eval("fromJSON('[]') < 1"), json!(false));
}

#[test]
fn precedence() {
    // `&&` binds tighter than `||`.
    assert_eq!(eval("true || false && false"), json!(true));
    assert_eq!(eval("(true || false) && false"), json!(false));
    // `!` binds tighter than comparisons and `&&`.
    assert_eq!(eval("!false && true"), json!(true));
    assert_eq!(eval("!inputs.dry_run && inputs.keep > 3"), json!(true));
    // Comparisons bind tighter than `&&` and `||`, and `<` tighter than `==`.
    assert_eq!(eval("1 == 1 && 2 == 3 || 'a' == 'a'"), json!(true));
    assert_eq!(eval("!(1 == 1)"), json!(false));
    assert_eq!(eval("1 < 2 == true"), json!(true));
    assert_eq!(
        eval("1 < 2 < 3"),
        json!(true),
        "chains compare left to right"
    );
}

#[test]
fn truthiness() {
    for falsy in [
        "false",
        "null",
        "0",
        "-0",
        "NaN",
        "''",
        "steps.build.outputs.empty",
        "inputs.none",
    ] {
        assert_eq!(eval(&format!("!{falsy}")), json!(true), "{falsy}");
    }
    for truthy in [
        "true",
        "1",
        "'x'",
        "'false'",
        "'0'",
        "steps.build.outputs.nested",
        "fromJSON('{}')",
        "fromJSON('[]')",
        "-2",
    ] {
        assert_eq!(eval(&format!("!{truthy}")), json!(false), "{truthy}");
    }
}

#[test]
fn and_and_or_give_an_operand() {
    assert_eq!(eval("'a' || 'b'"), json!("a"));
    assert_eq!(eval("inputs.none || 'latest'"), json!("latest"));
    assert_eq!(eval("inputs.version || 'latest'"), json!("1.2"));
    assert_eq!(eval("0 && 'b'"), json!(0));
    assert_eq!(eval("1 && 'b'"), json!("b"));
    assert_eq!(eval("false || null"), json!(null));
    // Short-circuit: the right side is not evaluated, so its error does not happen.
    assert_eq!(eval("true || fromJSON('not json')"), json!(true));
}

#[test]
fn functions() {
    assert_eq!(eval("contains('Hello World', 'WORLD')"), json!(true));
    assert_eq!(eval("contains(fromJSON('[1, \"2\"]'), 2)"), json!(true));
    assert_eq!(eval("startsWith('refs/heads/main', 'REFS/')"), json!(true));
    assert_eq!(eval("endsWith('v1.2', 2)"), json!(true));
    assert_eq!(
        eval("format('{0}-{1} {{x}}', 'a', 1.50)"),
        json!("a-1.5 {x}")
    );
    assert_eq!(
        eval("join(steps.*.status, ', ')"),
        json!("succeeded, failed")
    );
    assert_eq!(eval("join('abc')"), json!("abc"));
    assert_eq!(
        eval("toJSON(steps.build.outputs.nested)"),
        json!("{\n  \"a\": {\n    \"b\": [\n      10,\n      20\n    ]\n  }\n}")
    );
    assert_eq!(eval("fromJSON('{\"a\": [1, true]}').a[1]"), json!(true));
    assert_eq!(eval("case(inputs.keep > 3, 'many', 'few')"), json!("many"));
    assert!(eval_err("fromJSON('{')").contains("JSON"));
    assert!(eval_err("format('{1}', 'a')").contains("argument"));
    assert!(eval_err("case(1, 'a', 'b')").contains("`true` or `false`"));
}

#[test]
fn numbers_become_text_as_github_writes_them() {
    assert_eq!(template("v${{ 1.0 }}"), json!("v1"));
    assert_eq!(template("${{ 0.1 }}s"), json!("0.1s"));
    assert_eq!(template("${{ -0 }}."), json!("0."));
    assert_eq!(template("${{ true }}!"), json!("true!"));
    assert_eq!(
        eval("format('{0}', 0.84551240822557006)"),
        json!("0.84551240822557")
    );
}

#[test]
fn templates() {
    assert_eq!(
        template("${{ inputs.keep }}"),
        json!(5),
        "a lone expression keeps its type"
    );
    assert_eq!(template("  ${{ inputs.keep }}"), json!("  5"));
    assert_eq!(
        template("v${{ inputs.version }}-${{ run.id }}"),
        json!("v1.2-run-42")
    );
    assert_eq!(template("[${{ inputs.none }}]"), json!("[]"));
    assert_eq!(
        template("${{ steps.build.outputs.nested.a }}!"),
        json!("{\"b\":[10,20]}!")
    );
    assert_eq!(
        template("${{ '}}' }}"),
        json!("}}"),
        "`}}` inside quotes does not close"
    );
    assert_eq!(template("${{ 'it''s }}' }}"), json!("it's }}"));
    assert_eq!(
        template("${{ }}"),
        json!(null),
        "an empty expression is null"
    );
    assert_eq!(template("plain"), json!("plain"));
    let t = Template::parse("plain").unwrap();
    assert!(t.is_literal());
    assert_eq!(t.literal(), Some("plain"));
    let t = Template::parse("x ${{ run.id }}").unwrap();
    assert!(!t.is_literal());
    assert_eq!(t.literal(), None);
}

#[test]
fn conditions_with_or_without_braces() {
    let a = Expr::parse_condition("${{ inputs.keep > 1 }}").unwrap();
    let b = Expr::parse_condition("inputs.keep > 1").unwrap();
    assert_eq!(a.source(), b.source());
}

fn decide(src: &str, status: Status) -> bool {
    let e = Expr::parse_condition(src).unwrap();
    in_scope(|scope| e.eval_if(scope, status)).unwrap()
}

#[test]
fn if_without_a_status_function_implies_success() {
    let ok = Status {
        success: true,
        failure: false,
        cancelled: false,
    };
    let failed = Status {
        success: false,
        failure: true,
        cancelled: false,
    };
    let cancelled = Status {
        success: false,
        failure: false,
        cancelled: true,
    };
    assert!(decide("inputs.keep == 5", ok));
    assert!(
        !decide("inputs.keep == 5", failed),
        "`success() &&` is implied"
    );
    // A condition that would fail to evaluate is not evaluated when `success()` is false.
    assert!(!decide("fromJSON('x')", failed));
    assert!(decide("always()", failed));
    assert!(decide("always() && inputs.keep == 5", cancelled));
    assert!(!decide("failure()", ok));
    assert!(decide("failure()", failed));
    assert!(decide("failure() && steps.qa.status == 'failed'", failed));
    assert!(!decide("success()", cancelled));
    assert!(decide("cancelled()", cancelled));
    assert!(decide("!cancelled()", failed));
    assert!(decide("SUCCESS()", ok), "function names ignore case");
}

#[test]
fn status_functions_answer_only_in_if() {
    assert!(eval_err("success()").contains("only `if:`"));
}

#[test]
fn parse_errors() {
    for bad in [
        "inputs.",
        "1 ==",
        "(true",
        "a = b",
        "1 & 2",
        "nosuch()",
        "hashFiles('x')",
        "contains('a')",
        "case(true, 1)",
        "x[",
        "'open",
        "\"double\"",
        "inputs.x $ 2",
        "-0xff",
        "1 2",
        "'a'[0]",
        "foo.1",
    ] {
        assert!(Expr::parse(bad).is_err(), "`{bad}` should not parse");
    }
    assert!(Template::parse("${{ run.id").is_err());
    let err = Expr::parse("\"x\"").unwrap_err();
    assert!(err.contains("single quotes"), "{err}");
    let err = Expr::parse("hashFiles('x')").unwrap_err();
    assert!(err.contains("reads files"), "{err}");
    let err = Expr::parse("contians('a', 'b')").unwrap_err();
    assert!(err.contains("did you mean `contains()`"), "{err}");
}

// `!!!…true`, `((…1))` and `true && true && …` nested one level per `!`, `(` or `&&`, and
// parsing, evaluating and dropping recursed per level: a workflow file of a few hundred
// kilobytes of them overflowed the stack and aborted the process loading it.
#[test]
fn deeply_nested_expressions_are_refused_not_a_stack_overflow() {
    let n = 5_000;
    let nots = format!("{}true", "!".repeat(n));
    let parens = format!("{}1{}", "(".repeat(n), ")".repeat(n));
    let mixed = format!("{}x{}", "!(".repeat(n / 2), ")".repeat(n / 2));
    // GitHub does not count comparisons; a chain of them nests all the same.
    let compares = format!("1{}", " == 1".repeat(n / 2));
    let dots = format!("inputs{}", ".a".repeat(n));
    for src in [&nots, &parens, &mixed, &compares, &dots] {
        let err = Expr::parse(src).unwrap_err();
        assert!(
            err.contains(&format!("deeper than {MAX_EXPR_DEPTH} levels")),
            "{err}"
        );
        assert!(
            err.len() < 300,
            "the message repeats the whole source: {err}"
        );
        let err = Template::parse(&format!("${{{{ {src} }}}}")).unwrap_err();
        assert!(err.contains("deeper than"), "{err}");
    }
    // A long flat chain is not deep, but the whole expression has GitHub's length limit.
    let chain = format!("true{}", " && true".repeat(MAX_EXPR_LENGTH / 8 - 1));
    assert_eq!(eval(&chain), json!(true));
    let long = format!("true{}", " && true".repeat(MAX_EXPR_LENGTH));
    let err = Expr::parse(&long).unwrap_err();
    assert!(err.contains("characters long"), "{err}");
}

#[test]
fn expressions_nested_to_the_limit_still_parse() {
    // GitHub's own counting: the expression itself is one level, each `!` another.
    let d = MAX_EXPR_DEPTH - 1;
    assert_eq!(
        eval(&format!("{}true", "!".repeat(d))),
        json!(d.is_multiple_of(2))
    );
    assert!(Expr::parse(&format!("{}true", "!".repeat(d + 1))).is_err());
    let path = format!("inputs{}", ".a".repeat(d));
    assert_eq!(eval(&path), json!(null));
    assert!(Expr::parse(&format!("inputs{}", ".a".repeat(d + 1))).is_err());
}

// Nested `format('{0}{0}…', …)` doubles the text at every level: a few lines of a workflow
// could ask for gigabytes.
#[test]
fn an_expression_cannot_build_unbounded_text() {
    let mut src = "'xxxxxxxxxxxxxxxx'".to_string();
    for _ in 0..30 {
        src = format!("format('{{0}}{{0}}', {src})");
    }
    let err = eval_err(&src);
    assert!(err.contains("KiB"), "{err}");
}
