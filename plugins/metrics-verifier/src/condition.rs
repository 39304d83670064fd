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
