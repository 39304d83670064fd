//! Property tests of what whoever writes a workflow file controls: the file itself, the
//! `${{ }}` expressions in it, and the YAML aliases it may use. Random bytes and strings, and
//! structure-aware generators (workflows built from the real keys, expressions from the real
//! grammar), must never panic, never overflow the stack, and finish fast; an expression means
//! the same however it is printed; an alias bomb of any shape is refused.
//!
//! The default case counts keep this file to a few seconds; a long run is
//! `PROPTEST_CASES=20000 cargo test -p shiphat-workflow --test properties -- --skip deeply`,
//! with the megabyte-deep `deeply_*` properties run apart at a few hundred cases (see
//! docs/security-testing.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError};
use serde_json::{Map, Value, json};
use shiphat_workflow::{Error, Expr, MAX_EXPANDED_NODES, Scope, StepState, Template, parse};

/// The most one case may take. Parsing a workflow of a few kilobytes takes microseconds; a
/// second is generous enough for a loaded machine and a debug build, and still catches any
/// quadratic (or worse) blow-up an attacker could aim at.
const CASE_TIME: Duration = Duration::from_secs(1);

/// `cases` cases, unless `PROPTEST_CASES` asks for more (or fewer). Failures are not persisted
/// to files: a failure found becomes a named regression test instead.
fn config(cases: u32) -> Config {
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

/// Runs `f`, failing the case if it took longer than [`CASE_TIME`].
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, TestCaseError> {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    prop_assert!(took < CASE_TIME, "{what} took {took:?}");
    Ok(out)
}

/// Parses `text` as a workflow, in time, and checks that any error it reports is well formed:
/// at least one diagnostic, each with a message and, when it has one, a position inside the
/// text.
fn parse_checked(text: &str) -> Result<(), TestCaseError> {
    let result = timed("parse", || parse(text, Path::new("/fuzz/workflow.yaml")))?;
    match result {
        Ok(_) => {}
        Err(Error::Invalid(d)) => {
            prop_assert!(!d.0.is_empty(), "an invalid workflow with no diagnostic");
            // YAML breaks lines at `\n`, `\r\n` and a lone `\r`; the YAML parsers report an
            // unexpected end of the text on the line after the last (a known, harmless quirk:
            // `[` alone is refused at 2:1), so that line counts as inside.
            let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 2;
            for diag in &d.0 {
                prop_assert!(!diag.message.is_empty(), "an empty message");
                if let Some(at) = diag.location {
                    prop_assert!(
                        at.line >= 1 && at.line <= lines && at.column >= 1,
                        "{diag} is outside the {lines} lines of the text"
                    );
                }
            }
        }
        Err(Error::TooLarge { .. }) => {}
        Err(e) => prop_assert!(false, "unexpected error for text: {e}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Workflow files.

/// Scalars that the workflow format gives meaning to, and some that it should refuse.
fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "a", "build", "deploy", "echo", "noop", "./x.wasm", "/abs/p.wasm", "../up.wasm",
            "echo@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "echo@sha256:zz", "30s", "1h 30m", "0s", "-1s", "64MiB", "1GiB", "0", "3", "-5",
            "1e400", "2.5", "true", "false", "null", "~", "manual", "auto", "string", "number",
            "bool", "choice", "api.example.com", "*.example.com", "*", "https://x", "",
            "${{ inputs.version }}", "${{ env.REGION }}", "${{ steps.build.outputs.url }}",
            "${{ steps.a.status == 'failed' }}", "${{ run.id }}", "${{", "}}", "${{ }}",
            "${{ inputs.nope }}", "${{ 'a' < 1 }}", "inputs.version == '1'",
        ])
        .prop_map(str::to_string),
        1 => ".{0,24}",
    ]
}

/// A YAML value: a scalar, a small sequence or mapping of scalars, or a random expression.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => scalar().prop_map(|s| quote(&s)),
        1 => prop::collection::vec(scalar(), 0..4)
            .prop_map(|v| format!("[{}]", v.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", "))),
        1 => prop::collection::btree_map("[a-z_]{1,6}", scalar(), 0..4).prop_map(|m| {
            let entries: Vec<String> = m.iter().map(|(k, v)| format!("{k}: {}", quote(v))).collect();
            format!("{{{}}}", entries.join(", "))
        }),
        1 => expr_ast().prop_map(|e| quote(&format!("${{{{ {} }}}}", print(&e, false)))),
    ]
}

/// A scalar as YAML: plain where it is obviously safe, double-quoted (JSON escapes are YAML
/// escapes) otherwise. Both forms are exercised.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
    {
        s.to_string()
    } else {
        serde_json::to_string(s).expect("a string serialises")
    }
}

/// One `key: value` line group of a mapping at `indent`, where the value may itself be a
/// mapping of `keys`.
fn mapping(keys: &'static [&'static str]) -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(
        (
            prop_oneof![
                8 => prop::sample::select(keys).prop_map(str::to_string),
                // A misspelt or unknown key.
                1 => "[a-z_]{1,10}",
            ],
            value(),
        ),
        0..5,
    )
}

const WORKFLOW_KEYS: &[&str] = &[
    "name",
    "description",
    "inputs",
    "env",
    "concurrency",
    "resume",
    "steps",
    "on_failure",
    "finally",
];
const INPUT_KEYS: &[&str] = &["type", "description", "default", "required", "choices"];
const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "uses",
    "with",
    "needs",
    "if",
    "timeout",
    "memory",
    "stack",
    "log_limit",
    "output_limit",
    "continue_on_error",
    "idempotent",
];
const ALLOW_KEYS: &[&str] = &["read", "write", "http", "env", "secrets"];
const BACKOFF_KEYS: &[&str] = &["initial", "factor", "max"];

fn lines(out: &mut String, indent: usize, entries: &[(String, String)]) {
    for (k, v) in entries {
        out.push_str(&format!("{:indent$}{k}: {v}\n", ""));
    }
}

/// A step: mostly the real keys with plausible values, `allow` and `retries` as nested
/// mappings, and ids and needs drawn from a small pool so that references, duplicates and
/// cycles all occur.
fn step() -> impl Strategy<Value = String> {
    let ids = prop::sample::select(vec!["a", "b", "c", "build", "Bad Id", ""]);
    (
        ids.clone(),
        prop::sample::select(vec![
            "echo",
            "noop",
            "./p.wasm",
            "../x.wasm",
            "/abs.wasm",
            "e@",
        ]),
        prop::collection::vec(ids, 0..3),
        mapping(STEP_KEYS),
        prop::option::of(mapping(ALLOW_KEYS)),
        prop::option::of((
            prop::sample::select(vec!["0", "3", "-1", "x", "99999999999999999999"]),
            prop::option::of(mapping(BACKOFF_KEYS)),
        )),
    )
        .prop_map(|(id, uses, needs, extra, allow, retries)| {
            let mut s = format!("  - id: {}\n    uses: {}\n", quote(id), quote(uses));
            if !needs.is_empty() {
                let needs: Vec<String> = needs.iter().map(|n| quote(n)).collect();
                s.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
            }
            lines(&mut s, 4, &extra);
            if let Some(allow) = allow {
                s.push_str("    allow:\n");
                lines(&mut s, 6, &allow);
                if allow.is_empty() {
                    s.push_str("      {}\n");
                }
            }
            if let Some((count, backoff)) = retries {
                s.push_str(&format!("    retries:\n      count: {count}\n"));
                if let Some(backoff) = backoff {
                    s.push_str("      backoff:\n");
                    lines(&mut s, 8, &backoff);
                    if backoff.is_empty() {
                        s.push_str("        {}\n");
                    }
                }
            }
            s
        })
}

/// A whole workflow file from the real keys, with unknown keys, wrong types and broken
/// expressions mixed in at a low rate.
fn workflow() -> impl Strategy<Value = String> {
    (
        prop::collection::btree_map("[a-z_]{1,8}", mapping(INPUT_KEYS), 0..3),
        prop::collection::btree_map("[A-Z_]{1,6}", value(), 0..3),
        prop::option::of(prop_oneof![
            value(),
            (value(), any::<bool>()).prop_map(|(k, q)| format!("{{key: {k}, queue: {q}}}")),
        ]),
        prop::collection::vec(step(), 0..5),
        prop::collection::vec(step(), 0..2),
        prop::collection::vec(step(), 0..2),
        mapping(WORKFLOW_KEYS),
    )
        .prop_map(
            |(inputs, env, concurrency, steps, on_failure, finally, extra)| {
                let mut s = String::from("name: fuzz\n");
                lines(&mut s, 0, &extra);
                if !inputs.is_empty() {
                    s.push_str("inputs:\n");
                    for (name, keys) in &inputs {
                        s.push_str(&format!("  {name}:\n    type: string\n"));
                        lines(&mut s, 4, keys);
                    }
                }
                if !env.is_empty() {
                    s.push_str("env:\n");
                    for (name, v) in &env {
                        s.push_str(&format!("  {name}: {v}\n"));
                    }
                }
                if let Some(c) = concurrency {
                    s.push_str(&format!("concurrency: {c}\n"));
                }
                for (key, list) in [
                    ("steps", &steps),
                    ("on_failure", &on_failure),
                    ("finally", &finally),
                ] {
                    if !list.is_empty() {
                        s.push_str(&format!("{key}:\n"));
                        for step in list {
                            s.push_str(step);
                        }
                    }
                }
                s
            },
        )
}

proptest! {
    #![proptest_config(config(256))]

    /// Any text at all: an error or a workflow, quickly, with errors placed inside the text.
    #[test]
    fn any_text_is_refused_or_parsed_quickly(text in "(?s).{0,400}") {
        parse_checked(&text)?;
    }

    /// Text made of YAML's own punctuation, where the parsers' corner cases are.
    #[test]
    fn yaml_punctuation_is_refused_or_parsed_quickly(
        text in r"[-:?\[\]{},&*!|>'#%@` \n\ta-z0-9]{0,300}"
    ) {
        parse_checked(&text)?;
    }

    /// Random bytes, read as a file would be (invalid UTF-8 replaced).
    #[test]
    fn any_bytes_are_refused_or_parsed_quickly(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse_checked(&String::from_utf8_lossy(&bytes))?;
    }

    /// Workflows from the real keys: every combination of keys, values, references and
    /// expressions gives a workflow or well-placed errors, quickly.
    #[test]
    fn generated_workflows_are_refused_or_parsed_quickly(text in workflow()) {
        parse_checked(&text)?;
    }

    /// A generated workflow cut short anywhere, or with one byte changed, still parses or is
    /// refused cleanly.
    #[test]
    fn mutated_workflows_are_refused_or_parsed_quickly(
        text in workflow(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let mut bytes = text.into_bytes();
        if !bytes.is_empty() {
            let i = at.index(bytes.len());
            if cut {
                bytes.truncate(i);
            } else {
                bytes[i] = byte;
            }
        }
        parse_checked(&String::from_utf8_lossy(&bytes))?;
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions.

/// An expression as the grammar in `expr.rs` defines it, generated and printed here so that
/// what the parser builds can be compared with what was meant.
#[derive(Clone, Debug)]
enum E {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
    /// A root name and its segments.
    Path(String, Vec<Seg>),
    Not(Box<E>),
    And(Box<E>, Box<E>),
    Or(Box<E>, Box<E>),
    Cmp(&'static str, Box<E>, Box<E>),
}

#[derive(Clone, Debug)]
enum Seg {
    /// `.name`
    Dot(String),
    /// `['name']`
    Key(String),
    /// `[n]`
    Index(usize),
}

fn ident() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "version", "REGION", "build", "a", "outputs", "status", "url", "id", "0", "true",
            "null",
        ])
        .prop_map(str::to_string),
        1 => "[a-zA-Z_][a-zA-Z0-9_-]{0,6}",
    ]
    // A segment after `.` must lex as one identifier.
    .prop_filter("an identifier", |s| {
        s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
    })
}

fn path() -> impl Strategy<Value = E> {
    (
        prop_oneof![
            4 => prop::sample::select(vec!["inputs", "env", "steps", "run"]).prop_map(str::to_string),
            1 => "[a-z][a-z_]{0,5}".prop_filter("not a literal", |s| {
                !matches!(s.as_str(), "true" | "false" | "null")
            }),
        ],
        prop::collection::vec(
            prop_oneof![
                4 => ident().prop_map(Seg::Dot),
                1 => "[ -~]{0,6}".prop_map(Seg::Key),
                1 => (0usize..4).prop_map(Seg::Index),
            ],
            0..5,
        ),
    )
        .prop_map(|(root, segs)| E::Path(root, segs))
}

fn leaf() -> impl Strategy<Value = E> {
    prop_oneof![
        2 => ".{0,8}".prop_map(E::Str),
        1 => prop::sample::select(vec!["'", "\"", "\\", "}}", "${{", "a\\'b\"c", "''", "Build"])
            .prop_map(|s| E::Str(s.to_string())),
        // Values of the world in another case: GitHub compares strings without regard to it.
        2 => prop::sample::select(vec!["SUCCEEDED", "Failed", "EU", "HTTPS://X", "1.2.3", " 0x00 "])
            .prop_map(|s| E::Str(s.to_string())),
        1 => any::<i64>().prop_map(E::Int),
        1 => (-3i64..4).prop_map(E::Int),
        1 => any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(E::Float),
        1 => any::<bool>().prop_map(E::Bool),
        1 => Just(E::Null),
        5 => path(),
        // Paths that reach a value, so comparisons with the strings above happen often.
        3 => prop::sample::select(vec![
            "steps.build.status",
            "steps.a.status",
            "env.REGION",
            "steps.build.outputs.url",
            "inputs.version",
            "STEPS.Build.Outputs.A",
        ])
        .prop_map(|p| {
            let mut parts = p.split('.');
            let root = parts.next().unwrap_or_default().to_lowercase();
            E::Path(root, parts.map(|s| Seg::Dot(s.to_string())).collect())
        }),
    ]
}

fn expr_ast() -> impl Strategy<Value = E> {
    leaf().prop_recursive(6, 48, 2, |inner| {
        prop_oneof![
            inner.clone().prop_map(|e| E::Not(Box::new(e))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::And(Box::new(a), Box::new(b))),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| E::Or(Box::new(a), Box::new(b))),
            (
                prop::sample::select(vec!["==", "!=", "<", "<=", ">", ">="]),
                inner.clone(),
                inner
            )
                .prop_map(|(op, a, b)| E::Cmp(op, Box::new(a), Box::new(b))),
        ]
    })
}

/// A string literal as GitHub writes one: in single quotes, a quote inside doubled, and no
/// other escapes.
fn string_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Prints `e` so that it parses back to the same tree: operands of operators are
/// parenthesised unless they are atoms. With `spaced`, whitespace and redundant parentheses
/// are added, which must change nothing.
fn print(e: &E, spaced: bool) -> String {
    let sp = if spaced { "  " } else { " " };
    let operand = |x: &E| match x {
        E::Not(_) | E::And(..) | E::Or(..) | E::Cmp(..) => format!("({})", print(x, spaced)),
        _ if spaced => format!("({sp}{}{sp})", print(x, spaced)),
        _ => print(x, spaced),
    };
    match e {
        E::Str(s) => string_literal(s),
        E::Int(n) => n.to_string(),
        E::Float(f) => {
            // Rust prints finite floats without an exponent; `1` would read back as an integer,
            // which compares equal anyway.
            format!("{f}")
        }
        E::Bool(b) => b.to_string(),
        E::Null => "null".into(),
        E::Path(root, segs) => {
            let mut s = root.clone();
            for seg in segs {
                match seg {
                    Seg::Dot(name) => s.push_str(&format!(".{name}")),
                    Seg::Key(k) => s.push_str(&format!("[{}]", string_literal(k))),
                    Seg::Index(i) => s.push_str(&format!("[{i}]")),
                }
            }
            s
        }
        E::Not(x) => format!("!{}", operand(x)),
        E::And(a, b) => format!("{}{sp}&&{sp}{}", operand(a), operand(b)),
        E::Or(a, b) => format!("{}{sp}||{sp}{}", operand(a), operand(b)),
        E::Cmp(op, a, b) => format!("{}{sp}{op}{sp}{}", operand(a), operand(b)),
    }
}

/// The scope every expression is evaluated in: a little of everything a path can reach.
struct World {
    inputs: Map<String, Value>,
    env: Map<String, Value>,
    steps: BTreeMap<String, StepState>,
}

fn world() -> World {
    let Value::Object(inputs) = json!({
        "version": "1.2.3", "a": 0, "0": [1, "x", null], "REGION": true, "url": {"id": 2.5}
    }) else {
        unreachable!()
    };
    let Value::Object(env) = json!({"REGION": "eu", "a": "", "version": [] }) else {
        unreachable!()
    };
    let Value::Object(outputs) = json!({
        "url": "https://x", "a": [1, 2, {"id": "z"}], "0": false, "status": null
    }) else {
        unreachable!()
    };
    let steps = BTreeMap::from([
        (
            "build".to_string(),
            StepState {
                status: "succeeded".into(),
                outputs,
            },
        ),
        (
            "a".to_string(),
            StepState {
                status: "failed".into(),
                outputs: Map::new(),
            },
        ),
    ]);
    World { inputs, env, steps }
}

impl World {
    fn scope(&self) -> Scope<'_> {
        Scope {
            inputs: &self.inputs,
            env: &self.env,
            steps: &self.steps,
            run_id: "01RUN",
            dry_run: false,
        }
    }
}

/// A value of the model: objects and arrays are kept by reference, because GitHub's `==`
/// compares them by identity.
#[derive(Clone, Debug)]
enum M<'w> {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// An array or object of the world.
    At(&'w Value),
    /// An array or object made during evaluation (`run`): equal to nothing.
    Fresh(Value),
    /// A whole context, step or step's outputs, equal only to itself: named by its path.
    Ctx(String, Value),
}

impl M<'_> {
    fn from(v: &Value) -> M<'_> {
        match v {
            Value::Null => M::Null,
            Value::Bool(b) => M::Bool(*b),
            Value::Number(n) => M::Num(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => M::Str(s.clone()),
            v => M::At(v),
        }
    }

    fn json(&self) -> Value {
        match self {
            M::Null => Value::Null,
            M::Bool(b) => json!(b),
            M::Num(n) => json!(n),
            M::Str(s) => json!(s),
            M::At(v) => (*v).clone(),
            M::Fresh(v) | M::Ctx(_, v) => v.clone(),
        }
    }

    /// GitHub's documented truthiness.
    fn truthy(&self) -> bool {
        match self {
            M::Null => false,
            M::Bool(b) => *b,
            M::Num(n) => *n != 0.0 && !n.is_nan(),
            M::Str(s) => !s.is_empty(),
            M::At(_) | M::Fresh(_) | M::Ctx(..) => true,
        }
    }

    /// GitHub's documented conversion to a number.
    fn number(&self) -> f64 {
        match self {
            M::Null => 0.0,
            M::Bool(b) => f64::from(u8::from(*b)),
            M::Num(n) => *n,
            M::Str(s) => js_number(s),
            M::At(_) | M::Fresh(_) | M::Ctx(..) => f64::NAN,
        }
    }
}

/// JavaScript's `Number()`.
fn js_number(s: &str) -> f64 {
    // JavaScript's white space is Unicode's, less U+0085 and plus U+FEFF.
    let t = s.trim_matches(|c: char| (c.is_whitespace() && c != '\u{85}') || c == '\u{feff}');
    if t.is_empty() {
        return 0.0;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(digits) = t.strip_prefix(prefix) {
            return u64::from_str_radix(digits, radix).map_or(f64::NAN, |n| n as f64);
        }
    }
    let unsigned = t.trim_start_matches(['+', '-']);
    if unsigned.len() + 1 < t.len() {
        return f64::NAN;
    }
    if unsigned == "Infinity" {
        return if t.starts_with('-') {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
    }
    let digits_ok = unsigned
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '.')
        && unsigned
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && unsigned.chars().any(|c| c.is_ascii_digit());
    if !digits_ok {
        return f64::NAN;
    }
    t.parse::<f64>().unwrap_or(f64::NAN)
}

/// Upper case but for the dotless ı: how GitHub compares strings.
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c == 'ı' {
                vec![c]
            } else {
                c.to_uppercase().collect()
            }
        })
        .collect()
}

/// GitHub's loose equality and ordering, from its documented table: the same kinds compare
/// directly; a number and a string, or null or a boolean and anything else, as numbers.
fn compare(op: &str, a: &M, b: &M) -> bool {
    let scalar = |m: &M| !matches!(m, M::At(_) | M::Fresh(_) | M::Ctx(..));
    let (a, b) = match (a, b) {
        (M::Num(_), M::Num(_))
        | (M::Str(_), M::Str(_))
        | (M::Bool(_), M::Bool(_))
        | (M::Null, M::Null) => (a.clone(), b.clone()),
        (M::At(_) | M::Fresh(_) | M::Ctx(..), M::At(_) | M::Fresh(_) | M::Ctx(..)) => {
            (a.clone(), b.clone())
        }
        (M::Num(_) | M::Str(_), M::Num(_) | M::Str(_)) => (M::Num(a.number()), M::Num(b.number())),
        (M::Null | M::Bool(_), _) | (_, M::Null | M::Bool(_)) if scalar(a) && scalar(b) => {
            (M::Num(a.number()), M::Num(b.number()))
        }
        // An object or array against null or a boolean: the scalar becomes a number, the
        // kinds still differ.
        _ => return op == "!=",
    };
    let eq = match (&a, &b) {
        (M::Null, M::Null) => true,
        (M::Num(x), M::Num(y)) => x == y,
        (M::Str(x), M::Str(y)) => fold(x) == fold(y),
        (M::Bool(x), M::Bool(y)) => x == y,
        (M::At(x), M::At(y)) => std::ptr::eq(*x, *y),
        (M::Ctx(x, _), M::Ctx(y, _)) => x == y,
        _ => false,
    };
    let ord = match (&a, &b) {
        (M::Num(x), M::Num(y)) => x.partial_cmp(y),
        (M::Str(x), M::Str(y)) => Some(fold(x).cmp(&fold(y))),
        (M::Bool(x), M::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        "==" => eq,
        "!=" => !eq,
        "<" => ord == Some(std::cmp::Ordering::Less),
        ">" => ord == Some(std::cmp::Ordering::Greater),
        "<=" => eq || ord == Some(std::cmp::Ordering::Less),
        _ => eq || ord == Some(std::cmp::Ordering::Greater),
    }
}

/// What `e` means, computed from the documented rules rather than from the parser's tree:
/// `Err(())` where evaluation must fail.
fn meaning<'w>(e: &E, w: &'w World) -> Result<M<'w>, ()> {
    /// The key a segment reads: property names and indexes as text.
    fn text(seg: &Seg) -> String {
        match seg {
            Seg::Dot(k) | Seg::Key(k) => k.clone(),
            Seg::Index(i) => i.to_string(),
        }
    }
    fn get<'w>(m: &'w Map<String, Value>, key: &str) -> Option<&'w Value> {
        m.get(key)
            .or_else(|| m.iter().find(|(k, _)| fold(k) == fold(key)).map(|(_, v)| v))
    }
    fn walk<'w>(mut v: &'w Value, segs: &[Seg]) -> Option<&'w Value> {
        for seg in segs {
            v = match v {
                Value::Object(m) => get(m, &text(seg))?,
                Value::Array(a) => {
                    let n = match seg {
                        Seg::Index(i) => *i as f64,
                        _ => js_number(&text(seg)),
                    };
                    if !(n.is_finite() && n >= 0.0) {
                        return None;
                    }
                    a.get(n.floor() as usize)?
                }
                _ => return None,
            };
        }
        Some(v)
    }
    let from = |name: &str, m: &'w Map<String, Value>, segs: &[Seg]| match segs.first() {
        None => M::Ctx(name.into(), Value::Object(m.clone())),
        Some(first) => get(m, &text(first))
            .and_then(|v| walk(v, &segs[1..]))
            .map_or(M::Null, M::from),
    };
    let step_json = |s: &StepState| json!({"status": s.status, "outputs": s.outputs});
    Ok(match e {
        E::Str(s) => M::Str(s.clone()),
        E::Int(n) => M::Num(*n as f64),
        E::Float(f) => M::Num(*f),
        E::Bool(b) => M::Bool(*b),
        E::Null => M::Null,
        E::Path(root, segs) => match root.as_str() {
            "inputs" => from("inputs", &w.inputs, segs),
            "env" => from("env", &w.env, segs),
            "run" => {
                let run = json!({"id": "01RUN", "dry_run": false});
                match segs.first() {
                    None => M::Fresh(run),
                    Some(first) => match run.get(text(first).to_lowercase().as_str()) {
                        Some(v) if segs.len() == 1 => match v {
                            Value::String(s) => M::Str(s.clone()),
                            Value::Bool(b) => M::Bool(*b),
                            _ => M::Null,
                        },
                        _ => M::Null,
                    },
                }
            }
            "steps" => {
                let Some(id) = segs.first().map(text) else {
                    let all = w
                        .steps
                        .iter()
                        .map(|(k, s)| (k.clone(), step_json(s)))
                        .collect();
                    return Ok(M::Ctx("steps".into(), Value::Object(all)));
                };
                let state = w.steps.get(&id).or_else(|| {
                    w.steps
                        .iter()
                        .find(|(k, _)| fold(k) == fold(&id))
                        .map(|(_, s)| s)
                });
                match (state, segs.get(1).map(text)) {
                    (None, _) => M::Null,
                    (Some(state), None) => M::Ctx(format!("steps.{}", fold(&id)), step_json(state)),
                    (Some(state), Some(k)) if fold(&k) == "STATUS" => {
                        if segs.len() == 2 {
                            M::Str(state.status.clone())
                        } else {
                            M::Null
                        }
                    }
                    (Some(state), Some(k)) if fold(&k) == "OUTPUTS" => match segs.get(2) {
                        None => M::Ctx(
                            format!("steps.{}.outputs", fold(&id)),
                            Value::Object(state.outputs.clone()),
                        ),
                        Some(first) => get(&state.outputs, &text(first))
                            .and_then(|v| walk(v, &segs[3..]))
                            .map_or(M::Null, M::from),
                    },
                    _ => M::Null,
                }
            }
            _ => return Err(()),
        },
        E::Not(x) => M::Bool(!meaning(x, w)?.truthy()),
        // `&&` and `||` give the operand they stop at, and do not evaluate the other.
        E::And(a, b) => {
            let a = meaning(a, w)?;
            if a.truthy() { meaning(b, w)? } else { a }
        }
        E::Or(a, b) => {
            let a = meaning(a, w)?;
            if a.truthy() { a } else { meaning(b, w)? }
        }
        E::Cmp(op, a, b) => {
            let (a, b) = (meaning(a, w)?, meaning(b, w)?);
            M::Bool(compare(op, &a, &b))
        }
    })
}

/// Whether two results agree: equal values (numbers compared as numbers), or both errors.
fn same(got: Result<Value, shiphat_workflow::EvalError>, want: &Result<M, ()>) -> bool {
    match (got, want) {
        (Ok(g), Ok(w)) => match (g, w.json()) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (g, w) => g == w,
        },
        (Err(_), Err(())) => true,
        _ => false,
    }
}

/// Tokens of the expression language and a few that are not, for token-soup inputs.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(vec![
            "inputs", "env", "steps", "run", "id", "outputs", "status", ".", "[", "]", "(", ")",
            "!", "&&", "||", "==", "!=", "<", "<=", ">", ">=", "=", "'", "\"", "'a'", "\"b\"",
            "0", "-1", "1.5", "1..2", "-", "99999999999999999999999", "true", "false", "null",
            "${{", "}}", "\\", "&", "|", "$", "{", "}",
        ])
        .prop_map(str::to_string),
        1 => ".{0,3}",
    ]
}

proptest! {
    #![proptest_config(config(512))]

    /// A generated expression parses, and means what it was generated to mean; printed with
    /// other spacing and parentheses, or as it was stored, it means the same.
    #[test]
    fn printed_expressions_mean_what_they_say(e in expr_ast()) {
        let w = world();
        let scope = w.scope();
        let text = print(&e, false);
        let parsed = timed("Expr::parse", || Expr::parse(&text))?;
        let parsed = parsed.map_err(|m| TestCaseError::fail(format!("`{text}` did not parse: {m}")))?;
        let want = meaning(&e, &w);
        let got = parsed.eval(&scope);
        prop_assert!(same(got.clone(), &want), "`{text}`: got {got:?}, meant {want:?}");

        let spaced = print(&e, true);
        let reparsed = Expr::parse(&spaced)
            .map_err(|m| TestCaseError::fail(format!("`{spaced}` did not parse: {m}")))?;
        prop_assert!(same(reparsed.eval(&scope), &want), "`{spaced}` differs from `{text}`");

        let again = Expr::parse(&parsed.to_string())
            .map_err(|m| TestCaseError::fail(format!("`{parsed}` did not parse again: {m}")))?;
        prop_assert_eq!(&again, &parsed);

        // In a template, one `${{ }}` alone keeps the value's type; with text around it, the
        // value is spliced in as text.
        let template = Template::parse(&format!("${{{{{text}}}}}"))
            .map_err(|m| TestCaseError::fail(format!("template of `{text}`: {m}")))?;
        prop_assert!(same(template.eval(&scope), &want), "template of `{text}`");
        let spliced = Template::parse(&format!("v=${{{{ {text} }}}}!"))
            .map_err(|m| TestCaseError::fail(format!("template of `{text}`: {m}")))?;
        let want_text = want.as_ref().map(|v| match v.json() {
            Value::String(s) => format!("v={s}!"),
            Value::Null => "v=!".to_string(),
            v => format!("v={v}!"),
        });
        let got_text = spliced.eval_string(&scope);
        if let (Ok(got), Ok(want)) = (&got_text, &want_text) {
            // Numbers are printed as GitHub prints them; compare everything else exactly.
            if !matches!(meaning(&e, &w), Ok(M::Num(_))) {
                prop_assert_eq!(got, want);
            }
        } else {
            prop_assert!(want_text.is_err(), "`{text}` spliced: {got_text:?}");
        }
    }

    /// Any string, and any soup of the language's tokens: parsing an expression, a condition
    /// or a template never panics and is quick.
    #[test]
    fn any_expression_text_is_refused_or_parsed_quickly(
        soup in prop::collection::vec(token(), 0..40),
        glue in prop::sample::select(vec!["", " "]),
        text in "(?s).{0,80}",
    ) {
        let soup = soup.join(glue);
        for src in [&soup, &text] {
            let w = world();
            timed("expression", || {
                if let Ok(e) = Expr::parse(src) {
                    let _ = e.eval(&w.scope());
                }
                let _ = Expr::parse_condition(src);
                if let Ok(t) = Template::parse(&format!("x ${{{{ {src} }}}} y")) {
                    let _ = t.eval_string(&w.scope());
                }
                let _ = Template::parse(src);
            })?;
        }
    }
}

/// How a deeply nested expression is built: `!!!…x`, `((( … x)))`, `x && x && …`, or a mix.
fn deep_expression() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["!", "(", "&&", "||", "==", "mix"]),
        // Up to the megabyte a workflow file may hold.
        1usize..120_000,
    )
        .prop_map(|(shape, n)| match shape {
            "!" => format!("{}true", "!".repeat(n)),
            "(" => format!("{}1{}", "(".repeat(n), ")".repeat(n)),
            "&&" | "||" => format!("true{}", format!(" {shape} true").repeat(n)),
            "==" => {
                format!("{}1 == 1", "(1 == 1) == (".repeat(n.min(50_000)))
                    + &")".repeat(n.min(50_000))
            }
            _ => "!(".repeat(n / 2) + "x" + &")".repeat(n / 2),
        })
}

proptest! {
    #![proptest_config(config(24))]

    /// A workflow file may hold up to a megabyte of one expression: whatever its nesting, it is
    /// parsed or refused, evaluated and dropped without exhausting the stack.
    #[test]
    fn deeply_nested_expressions_do_not_overflow_the_stack(src in deep_expression()) {
        let w = world();
        timed("deep expression", || {
            if let Ok(e) = Expr::parse(&src) {
                let _ = e.eval(&w.scope());
            }
            if let Ok(t) = Template::parse(&format!("${{{{ {src} }}}}")) {
                let _ = t.eval(&w.scope());
            }
        })?;
    }
}

/// A deeply nested YAML document: flow sequences, flow mappings, block sequences, or the same
/// under a step's `with:`.
fn deep_yaml() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["[", "{", "-", "with"]),
        1usize..120_000,
    )
        .prop_map(|(shape, n)| {
            match shape {
                "[" => format!("{}1{}", "[".repeat(n), "]".repeat(n)),
                "{" => format!("{}1{}", "{a: ".repeat(n), "}".repeat(n)),
                // Block sequences nest by indentation; keep the file under its size cap.
                "-" => {
                    (0..n.min(1_000))
                        .map(|i| format!("{:i$}- \n", ""))
                        .collect::<String>()
                        + "x\n"
                }
                _ => format!(
                    "name: deep\nsteps:\n  - id: a\n    uses: echo\n    with:\n      x: {}1{}\n",
                    "[".repeat(n),
                    "]".repeat(n)
                ),
            }
        })
}

proptest! {
    #![proptest_config(config(24))]

    /// A workflow file nested as deep as its megabyte allows is parsed or refused without
    /// exhausting the stack.
    #[test]
    fn deeply_nested_yaml_does_not_overflow_the_stack(text in deep_yaml()) {
        parse_checked(&text)?;
    }
}

// ---------------------------------------------------------------------------------------------
// YAML aliases.

/// A document built level by level: level 0 is a sequence of `leaves` scalars; each level
/// above is a sequence or a mapping holding `fan` aliases to the level below. Returns the text
/// and how many nodes the whole document expands to (collections, scalars and mapping keys,
/// as the pre-pass counts them).
fn alias_document(levels: &[(bool, usize)], leaves: usize, under_with: bool) -> (String, u64) {
    let indent = if under_with { "      " } else { "" };
    let mut text = if under_with {
        String::from("name: bomb\nsteps:\n  - id: a\n    uses: echo\n    with:\n")
    } else {
        String::new()
    };
    let items = vec!["\"lol\""; leaves].join(", ");
    text.push_str(&format!("{indent}l0: &l0 [{items}]\n"));
    let mut size = 1 + leaves as u64;
    // The document's own nodes: its root mapping, and `name`, `steps`, the step and its `id`,
    // `uses` and `with` when the levels sit in a step.
    let mut total = if under_with { 12 } else { 1 } + 1 + size;
    for (level, &(as_map, fan)) in levels.iter().enumerate() {
        let prev = level;
        let cur = level + 1;
        if as_map {
            let entries: Vec<String> = (0..fan).map(|i| format!("k{i}: *l{prev}")).collect();
            text.push_str(&format!(
                "{indent}l{cur}: &l{cur} {{{}}}\n",
                entries.join(", ")
            ));
            size = 1 + fan as u64 * (1 + size);
        } else {
            let aliases = vec![format!("*l{prev}"); fan].join(", ");
            text.push_str(&format!("{indent}l{cur}: &l{cur} [{aliases}]\n"));
            size = 1 + fan as u64 * size;
        }
        total += 1 + size;
    }
    (text, total)
}

proptest! {
    #![proptest_config(config(64))]

    /// Alias bombs of any shape (depth, fan-out, sequences or mappings, at the top or inside a
    /// step's `with:`) are refused quickly with the budget's message; documents well under the
    /// budget are never refused for it.
    #[test]
    fn alias_bombs_of_any_shape_are_refused(
        levels in prop::collection::vec((any::<bool>(), 2usize..16), 1..10),
        leaves in 1usize..50,
        under_with in any::<bool>(),
    ) {
        let (text, size) = alias_document(&levels, leaves, under_with);
        let result = timed("alias document", || parse(&text, Path::new("bomb.yaml")))?;
        let refused = match &result {
            Err(Error::Invalid(d)) => d
                .0
                .iter()
                .any(|d| d.message.contains(&format!("past {MAX_EXPANDED_NODES} nodes"))),
            _ => false,
        };
        prop_assert_eq!(
            refused,
            size > MAX_EXPANDED_NODES,
            "{} nodes expanded; {:?}",
            size,
            result.err().map(|e| e.to_string())
        );
    }
}

/// The budget counts exactly what it says: a document of exactly MAX_EXPANDED_NODES nodes is
/// not refused for its size, and one more node is.
#[test]
fn the_alias_budget_is_exact() {
    // The root mapping, the key `l0`, the sequence and its scalars.
    let fits = (MAX_EXPANDED_NODES - 3) as usize;
    for (leaves, refused) in [(fits, false), (fits + 1, true)] {
        let (text, size) = alias_document(&[], leaves, false);
        assert_eq!(size, leaves as u64 + 3);
        let err = parse(&text, Path::new("edge.yaml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err.contains(&format!("past {MAX_EXPANDED_NODES} nodes")),
            refused,
            "{size} nodes: {err}"
        );
    }
}
