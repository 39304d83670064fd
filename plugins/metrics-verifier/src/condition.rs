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

#[cfg(test)]
mod tests {
    use super::*;

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
