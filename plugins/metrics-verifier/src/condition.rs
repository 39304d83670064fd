//! `success_condition` and `failure_condition`: expr-lang expressions over `result`.

use std::sync::LazyLock;

use expr::Value;

use crate::analysis::Reading;

/// A compiled condition and the text it came from.
pub struct Condition {
    pub text: String,
    program: expr::Program,
    /// Whether the condition reads `result` as a list, `result[0] >= 0.95`, the way Argo
    /// Rollouts hands a Prometheus vector over. Otherwise `result` is the number itself, the
    /// way Argo hands a scalar over. The one measured number fits either.
    list: bool,
}

impl Condition {
    /// Compiles `text` and checks, on a sample value, that it names no variable but `result`
    /// and yields true or false, so a condition that can never work is a configuration
    /// error before any measurement rather than an Error on every one. A condition that
    /// does not work on `result` as a number is tried on `result` as a one-item list.
    pub fn compile(text: &str) -> Result<Condition, String> {
        let program = expr::compile(text).map_err(one_line)?;
        let mut condition = Condition {
            text: text.to_string(),
            program,
            list: false,
        };
        let sample = Reading::Number(0.0);
        let Err(as_number) = condition.eval(&sample) else {
            return Ok(condition);
        };
        condition.list = true;
        match condition.eval(&sample) {
            Ok(_) => Ok(condition),
            // Name the error of the form the condition was written for.
            Err(as_list) if text.contains("result[") => Err(as_list),
            Err(_) => Err(as_number),
        }
    }

    /// The line a chart can draw for this condition, when it is one comparison of `result`
    /// with a number (`result < 0.01`, `0.95 <= result`): `(op, value)` with `result` on the
    /// left. Anything richer has no single line, and gets `None`.
    pub fn threshold(&self) -> Option<(&'static str, f64)> {
        const OPS: [&str; 6] = ["<=", ">=", "==", "!=", "<", ">"];
        let text = self.text.trim();
        let (at, op) = OPS
            .iter()
            .find_map(|op| text.find(op).map(|at| (at, *op)))?;
        let (left, right) = (text[..at].trim(), text[at + op.len()..].trim());
        let mirrored = |op| match op {
            "<" => ">",
            ">" => "<",
            "<=" => ">=",
            ">=" => "<=",
            same => same,
        };
        let result = if self.list { "result[0]" } else { "result" };
        if left == result {
            Some((op, right.parse().ok()?))
        } else if right == result {
            Some((mirrored(op), left.parse().ok()?))
        } else {
            None
        }
    }

    /// Compiles `text` without trying it on a sample: for a `web` metric, whose `result` may
    /// be anything its answer holds (`result.ok && result.successPercent >= 0.9`).
    pub fn compile_for_any_value(text: &str) -> Result<Condition, String> {
        Ok(Condition {
            text: text.to_string(),
            program: expr::compile(text).map_err(one_line)?,
            list: false,
        })
    }

    /// Whether the condition holds for `result`.
    pub fn eval(&self, result: &Reading) -> Result<bool, String> {
        let mut context = expr::Context::default();
        let result = match result {
            Reading::Number(n) if self.list => Value::Array(vec![Value::Float(*n)]),
            Reading::Number(n) => Value::Float(*n),
            Reading::Json(json) => from_json(json),
        };
        context.insert("result".to_string(), result);
        match ENVIRONMENT.run(&self.program, &context) {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("it gives `{other:?}`, not true or false")),
            Err(e) => Err(one_line(e)),
        }
    }
}

/// expr-lang's own functions, and the helpers Argo Rollouts gives its conditions, so that a
/// condition copied from an AnalysisTemplate works unchanged. Built once: every measurement
/// evaluates one or two conditions.
static ENVIRONMENT: LazyLock<expr::Environment<'static>> =
    LazyLock::new(|| {
        let mut env = expr::Environment::new();
        env.add_function("isNaN", |call| {
            let [x] = args::<1>("isNaN", call.args)?;
            Ok(Value::Bool(number("isNaN", &x)?.is_nan()))
        });
        env.add_function("isInf", |call| {
            let [x] = args::<1>("isInf", call.args)?;
            Ok(Value::Bool(number("isInf", &x)?.is_infinite()))
        });
        // Argo's `isNil` and `default` ask whether the provider gave no value at all. Here a
        // measurement without a value is an Error before any condition runs, so `result` is never
        // nil; they still answer for whatever they are given.
        env.add_function("isNil", |call| {
            let [x] = args::<1>("isNil", call.args)?;
            Ok(Value::Bool(matches!(x, Value::Nil)))
        });
        env.add_function("default", |call| {
            let [x, fallback] = args::<2>("default", call.args)?;
            Ok(if matches!(x, Value::Nil) { fallback } else { x })
        });
        env.add_function("asInt", |call| {
            let [x] = args::<1>("asInt", call.args)?;
            match x {
                // Go's `int64(f)`, as in Argo: towards zero, saturating.
                Value::Float(f) => Ok(Value::Integer(f as i64)),
                Value::Integer(i) => Ok(Value::Integer(i)),
                Value::String(s) => s.trim().parse().map(Value::Integer).map_err(|_| {
                    expr::Error::ExprError(format!("asInt(): `{s}` is not an integer"))
                }),
                other => Err(expr::Error::ExprError(format!(
                    "asInt() takes a number or a string, not `{other}`"
                ))),
            }
        });
        env.add_function("asFloat", |call| {
            let [x] = args::<1>("asFloat", call.args)?;
            match x {
                Value::String(s) => s.trim().parse().map(Value::Float).map_err(|_| {
                    expr::Error::ExprError(format!("asFloat(): `{s}` is not a number"))
                }),
                other => number("asFloat", &other).map(Value::Float),
            }
        });
        env
    });

/// A JSON value as expr-lang's, for a condition on a `web` answer.
fn from_json(json: &serde_json::Value) -> Value {
    match json {
        serde_json::Value::Null => Value::Nil,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(items) => Value::Array(items.iter().map(from_json).collect()),
        serde_json::Value::Object(entries) => Value::Map(
            entries
                .iter()
                .map(|(k, v)| (k.clone(), from_json(v)))
                .collect(),
        ),
    }
}

/// The `N` arguments of a call to `name`, or an error saying how many it takes.
fn args<const N: usize>(name: &str, args: Vec<Value>) -> expr::Result<[Value; N]> {
    let given = args.len();
    args.try_into().map_err(|_| {
        expr::Error::ExprError(format!(
            "{name}() takes {N} argument{}, not {given}",
            if N == 1 { "" } else { "s" }
        ))
    })
}

/// `x` as a number, for a helper that takes one.
fn number(name: &str, x: &Value) -> expr::Result<f64> {
    match x {
        Value::Float(f) => Ok(*f),
        Value::Integer(i) => Ok(*i as f64),
        other => Err(expr::Error::ExprError(format!(
            "{name}() takes a number, not `{other}`; a vector result is a list: write `{name}(result[0])`"
        ))),
    }
}

/// The parser's errors draw the offending line with a caret over several lines; a step error
/// is one line.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "|")
        .collect::<Vec<_>>()
        .join(" ")
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    use proptest::prelude::*;
    use shiphat_proptest::{config, timed};

    use super::*;

    /// Pieces of expr-lang, for condition soup.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "result", "result", "<", "<=", ">", ">=", "==", "!=", "&&", "||", "and", "or",
                "not", "!", "(", ")", "[", "]", "{", "}", "0", "1", "0.5", "-1", "1e3", "1e400",
                ".5", "+", "-", "*", "/", "%", "**", "?", ":", "??", "in", "..", "1..3", "len",
                "'a'", "\"b\"", "nil", "true", "false", "let", "=", ";", "#", ".", ",", "|",
                "map", "filter", "all", "abs", "max", "now()", "x", "result.y", "result[0]",
            ])
            .prop_map(str::to_string),
            1 => ".{0,4}",
        ]
    }

    fn value() -> impl Strategy<Value = f64> {
        prop_oneof![
            any::<f64>(),
            prop::sample::select(vec![
                0.0,
                -0.0,
                1.0,
                0.01,
                0.95,
                f64::NAN,
                f64::INFINITY,
                1e300
            ]),
        ]
    }

    proptest! {
        #![proptest_config(config(512))]

        /// Any condition text: compiling it, and evaluating what compiles on any number, never
        /// panics and is quick.
        #[test]
        fn any_condition_compiles_or_is_refused_quickly(
            soup in prop::collection::vec(token(), 0..16),
            text in ".{0,40}",
            result in value(),
        ) {
            for src in [soup.join(" "), text] {
                timed(|| {
                    if let Ok(condition) = Condition::compile(&src) {
                        let _ = condition.eval(&Reading::Number(result));
                        let _ = condition.threshold();
                    }
                })?;
            }
        }

        /// Where a condition has a threshold (the line a chart draws), the condition holds
        /// exactly on that line's side, for any measurement.
        #[test]
        fn a_threshold_says_what_the_condition_does(
            op in prop::sample::select(vec!["<", "<=", ">", ">=", "==", "!="]),
            number in prop_oneof![
                any::<i32>().prop_map(|n| n.to_string()),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:?}")),
                prop::sample::select(vec!["0", "0.01", "-0.5", "1e3", "2.5e-3"]).prop_map(str::to_string),
            ],
            result_first in any::<bool>(),
            spaces in prop::sample::select(vec!["", " ", "  "]),
            result in value(),
        ) {
            let text = if result_first {
                format!("result{spaces}{op}{spaces}{number}")
            } else {
                format!("{number}{spaces}{op}{spaces}result")
            };
            let Ok(condition) = Condition::compile(&text) else {
                return Ok(());
            };
            let Some((line_op, line)) = condition.threshold() else {
                return Err(TestCaseError::fail(format!("`{text}` has no threshold")));
            };
            let Ok(holds) = condition.eval(&Reading::Number(result)) else {
                return Ok(());
            };
            let drawn = match line_op {
                "<" => result < line,
                "<=" => result <= line,
                ">" => result > line,
                ">=" => result >= line,
                "==" => result == line,
                _ => result != line,
            };
            prop_assert_eq!(holds, drawn, "`{}` at {}: line {} {}", text, result, line_op, line);
        }
    }

    /// `text` evaluated on `result`.
    fn holds(text: &str, result: f64) -> bool {
        Condition::compile(text)
            .unwrap_or_else(|e| panic!("`{text}` does not compile: {e}"))
            .eval(&Reading::Number(result))
            .unwrap_or_else(|e| panic!("`{text}` at {result}: {e}"))
    }

    // `isNaN(result) || result < 0.01`, straight from an AnalysisTemplate, was refused as
    // "Unknown function": Argo's helpers did not exist.
    #[test]
    fn argo_helpers_work_in_conditions() {
        assert!(holds("isNaN(result) || result < 0.01", 0.004));
        assert!(!holds("isNaN(result) || result < 0.01", 0.2));
        assert!(!holds("isInf(result)", 1e308));
        assert!(holds("isInf(result * 10)", 1e308));
        assert!(!holds("isNil(result)", 0.5));
        assert!(holds("default(result, 0) >= 0.95", 0.97));
        assert!(holds("default(nil, 0.99) >= 0.95", 0.0));
        assert!(holds("asInt(result) == 3", 3.7));
        assert!(holds("asInt(result) == -3", -3.7));
        assert!(holds("asInt('42') == 42", 0.0));
        assert!(holds("asFloat('0.5') < result", 0.6));
        assert!(holds("asFloat(result) == 2", 2.0));
        // A helper given the wrong thing says what it takes.
        let e = Condition::compile("isNaN('x')").err().unwrap();
        assert!(e.contains("isNaN() takes a number"), "{e}");
        let e = Condition::compile("default(result)").err().unwrap();
        assert!(e.contains("default() takes 2 arguments, not 1"), "{e}");
        let e = Condition::compile("asInt('many') > 1").err().unwrap();
        assert!(e.contains("`many` is not an integer"), "{e}");
    }

    // `result[0] >= 0.95`, the way Argo's documentation writes every Prometheus condition,
    // could not work: `result` was a number, and a number has no `[0]`.
    #[test]
    fn result_reads_as_a_one_item_list_where_a_condition_indexes_it() {
        assert!(holds("result[0] >= 0.95", 0.97));
        assert!(!holds("result[0] >= 0.95", 0.5));
        assert!(holds("len(result) == 1 && result[0] < 0.01", 0.004));
        assert!(holds("isNaN(result[0]) || result[0] < 0.01", 0.004));
        assert!(holds("default(result[0], 0) <= 0.01", 0.004));
        // And a plain `result` is still the number.
        assert!(holds("result >= 0.95", 0.97));
        let t = |text: &str| Condition::compile(text).unwrap().threshold();
        assert_eq!(t("result[0] >= 0.95"), Some((">=", 0.95)));
        assert_eq!(t("10 > result[0]"), Some(("<", 10.0)));
        // A condition that works in neither form names its own error.
        let e = Condition::compile("result[0] > limit").err().unwrap();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn thresholds_of_simple_comparisons() {
        let t = |text: &str| Condition::compile(text).unwrap().threshold();
        assert_eq!(t("result < 0.01"), Some(("<", 0.01)));
        assert_eq!(t("  result>=3 "), Some((">=", 3.0)));
        assert_eq!(t("0.95 <= result"), Some((">=", 0.95)));
        assert_eq!(t("result > 1 && result < 2"), None);
        assert_eq!(t("result * 2 < 1"), None);
    }
}
