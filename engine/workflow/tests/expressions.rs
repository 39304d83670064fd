//! The `${{ }}` language, evaluated against a small fixed scope.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};
use shiphat_workflow::{Expr, MAX_EXPR_DEPTH, Scope, StepState, Template};

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

fn eval(src: &str) -> Value {
    let f = fixture();
    let scope = Scope {
        inputs: &f.inputs,
        env: &f.env,
        steps: &f.steps,
        run_id: "run-42",
        dry_run: false,
    };
    Expr::parse(src)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
        .eval(&scope)
        .unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn template(src: &str) -> Value {
    let f = fixture();
    let scope = Scope {
        inputs: &f.inputs,
        env: &f.env,
        steps: &f.steps,
        run_id: "run-42",
        dry_run: false,
    };
    Template::parse(src).unwrap().eval(&scope).unwrap()
}

#[test]
fn literals_and_paths() {
    assert_eq!(eval("'a b'"), json!("a b"));
    assert_eq!(eval("\"dq\""), json!("dq"));
    assert_eq!(eval("42"), json!(42));
    assert_eq!(eval("-1.5"), json!(-1.5));
    assert_eq!(eval("true"), json!(true));
    assert_eq!(eval("null"), json!(null));
    assert_eq!(eval("inputs.version"), json!("1.2"));
    assert_eq!(eval("env.REGION"), json!("eu"));
    assert_eq!(eval("run.id"), json!("run-42"));
    assert_eq!(eval("steps.qa.status"), json!("failed"));
    assert_eq!(eval("steps.build.outputs.url"), json!("https://x.test"));
}

#[test]
fn indexing() {
    assert_eq!(eval("steps.build.outputs.nested.a.b[1]"), json!(20));
    assert_eq!(
        eval("steps.build.outputs['site-url']"),
        json!("https://site.test")
    );
    assert_eq!(eval("steps.build.outputs[\"nested\"]['a'].b[0]"), json!(10));
}

#[test]
fn missing_values_are_null() {
    assert_eq!(eval("steps.build.outputs.nope"), json!(null));
    assert_eq!(eval("steps.build.outputs.nested.x.y"), json!(null));
    assert_eq!(eval("steps.build.outputs.nested.a.b[9]"), json!(null));
    assert_eq!(eval("steps.skipped_one.outputs.x"), json!(null));
    assert_eq!(eval("inputs.unset"), json!(null));
}

#[test]
fn comparisons() {
    assert_eq!(eval("inputs.keep == 5"), json!(true));
    assert_eq!(eval("inputs.keep == 5.0"), json!(true));
    assert_eq!(eval("inputs.keep != 5"), json!(false));
    assert_eq!(eval("inputs.keep > 4"), json!(true));
    assert_eq!(eval("inputs.keep >= 5"), json!(true));
    assert_eq!(eval("inputs.keep < 5"), json!(false));
    assert_eq!(eval("inputs.keep <= 5"), json!(true));
    assert_eq!(eval("10 > 9"), json!(true), "numbers compare numerically");
    assert_eq!(eval("'10' < '9'"), json!(true), "strings compare lexically");
    assert_eq!(eval("'abc' == 'abc'"), json!(true));
    assert_eq!(eval("'5' == 5"), json!(false), "no coercion between types");
    assert_eq!(eval("inputs.none == null"), json!(true));
    assert_eq!(eval("steps.qa.status == 'failed'"), json!(true));
}

#[test]
fn ordering_mixed_types_is_an_error() {
    let f = fixture();
    let scope = Scope {
        inputs: &f.inputs,
        env: &f.env,
        steps: &f.steps,
        run_id: "r",
        dry_run: false,
    };
    let err = Expr::parse("'a' < 1").unwrap().eval(&scope).unwrap_err();
    assert!(err.to_string().contains("cannot order"), "{err}");
}

#[test]
fn precedence() {
    // `&&` binds tighter than `||`.
    assert_eq!(eval("true || false && false"), json!(true));
    assert_eq!(eval("(true || false) && false"), json!(false));
    // `!` binds tighter than comparisons and `&&`.
    assert_eq!(eval("!false && true"), json!(true));
    assert_eq!(eval("!inputs.dry_run && inputs.keep > 3"), json!(true));
    // Comparisons bind tighter than `&&` and `||`.
    assert_eq!(eval("1 == 1 && 2 == 3 || 'a' == 'a'"), json!(true));
    assert_eq!(eval("!(1 == 1)"), json!(false));
}

#[test]
fn truthiness() {
    for falsy in [
        "false",
        "null",
        "0",
        "''",
        "steps.build.outputs.empty",
        "inputs.none",
    ] {
        assert_eq!(eval(&format!("!{falsy}")), json!(true), "{falsy}");
    }
    for truthy in ["true", "1", "'x'", "steps.build.outputs.nested", "-2"] {
        assert_eq!(eval(&format!("!{truthy}")), json!(false), "{truthy}");
    }
    // `&&` and `||` give booleans, not their operands.
    assert_eq!(eval("'a' || 'b'"), json!(true));
    assert_eq!(eval("0 && 'b'"), json!(false));
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

#[test]
fn parse_errors() {
    for bad in [
        "",
        "inputs.",
        "1 ==",
        "(true",
        "a = b",
        "foo()",
        "x[",
        "x[y]",
        "'open",
        "1 < 2 < 3",
        "inputs.x $ 2",
    ] {
        assert!(Expr::parse(bad).is_err(), "`{bad}` should not parse");
    }
    assert!(Template::parse("${{ run.id").is_err());
    assert!(Template::parse("${{ }}").is_err());
}

// `!!!…true`, `((…1))` and `true && true && …` nested one level per `!`, `(` or `&&`, and
// parsing, evaluating and dropping recursed per level: a workflow file of a few hundred
// kilobytes of them overflowed the stack and aborted the process loading it.
#[test]
fn deeply_nested_expressions_are_refused_not_a_stack_overflow() {
    let n = 200_000;
    let nots = format!("{}true", "!".repeat(n));
    let parens = format!("{}1{}", "(".repeat(n), ")".repeat(n));
    let chain = format!("true{}", " && true".repeat(n));
    let mixed = format!("{}x{}", "!(".repeat(n), ")".repeat(n));
    for src in [&nots, &parens, &chain, &mixed] {
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
}

#[test]
fn expressions_nested_to_the_limit_still_parse() {
    let d = MAX_EXPR_DEPTH;
    assert_eq!(
        eval(&format!("{}true", "!".repeat(d))),
        json!(d.is_multiple_of(2))
    );
    assert_eq!(
        eval(&format!("{}1{}", "(".repeat(d), ")".repeat(d))),
        json!(1)
    );
    assert_eq!(eval(&format!("true{}", " && true".repeat(d))), json!(true));
    assert!(Expr::parse(&format!("{}true", "!".repeat(d + 1))).is_err());
}
