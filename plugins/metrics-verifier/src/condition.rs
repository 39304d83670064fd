//! `success_condition` and `failure_condition`: expr-lang expressions over `result`.

/// A compiled condition and the text it came from.
pub struct Condition {
    pub text: String,
    program: expr::Program,
}

impl Condition {
    /// Compiles `text` and checks, on a sample value, that it names no variable but `result`
    /// and yields true or false, so a condition that can never work is a configuration
    /// error before any measurement rather than an Error on every one.
    pub fn compile(text: &str) -> Result<Condition, String> {
        let program = expr::compile(text).map_err(one_line)?;
        let condition = Condition {
            text: text.to_string(),
            program,
        };
        condition.eval(0.0)?;
        Ok(condition)
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
        match (left, right) {
            ("result", number) => Some((op, number.parse().ok()?)),
            (number, "result") => Some((mirrored(op), number.parse().ok()?)),
            _ => None,
        }
    }

    /// Whether the condition holds for `result`.
    pub fn eval(&self, result: f64) -> Result<bool, String> {
        let mut context = expr::Context::default();
        context.insert("result".to_string(), expr::Value::Float(result));
        match expr::Environment::new().run(&self.program, &context) {
            Ok(expr::Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!("it gives `{other:?}`, not true or false")),
            Err(e) => Err(one_line(e)),
        }
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
                        let _ = condition.eval(result);
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
            let Ok(holds) = condition.eval(result) else {
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
