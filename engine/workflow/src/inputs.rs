//! Turning the text a user typed (`--input version=1.2`) into typed input values, and
//! evaluating the workflow's `env:` once inputs are known.

use serde_json::{Map, Number, Value};

use crate::expr::{EvalError, Scope};
use crate::{InputKind, Workflow};

impl Workflow {
    /// Parses each given `(name, text)` by its input's kind, applies defaults, and reports every
    /// unknown name, unparsable value and missing required input. Inputs neither given nor
    /// defaulted are null.
    pub fn resolve_inputs(
        &self,
        given: &[(String, String)],
    ) -> Result<Map<String, Value>, Vec<String>> {
        let mut out = Map::new();
        let mut errors = Vec::new();
        for (name, text) in given {
            let Some(input) = self.inputs.iter().find(|i| &i.name == name) else {
                errors.push(format!(
                    "unknown input `{name}`{}",
                    crate::did_you_mean(name, self.inputs.iter().map(|i| i.name.as_str()))
                ));
                continue;
            };
            if out.contains_key(name) {
                errors.push(format!("input `{name}` is given more than once"));
                continue;
            }
            match parse_value(&input.kind, text) {
                Ok(v) => {
                    out.insert(name.clone(), v);
                }
                Err(why) => errors.push(format!("input `{name}`: {why}")),
            }
        }
        for input in &self.inputs {
            if out.contains_key(&input.name) {
                continue;
            }
            match (&input.default, input.required) {
                (Some(d), _) => {
                    out.insert(input.name.clone(), d.clone());
                }
                (None, true) => errors.push(format!("missing required input `{}`", input.name)),
                (None, false) => {
                    out.insert(input.name.clone(), Value::Null);
                }
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Evaluates `env:` against the resolved inputs. Values are always strings, as environment
    /// variables are.
    pub fn resolve_env(
        &self,
        inputs: &Map<String, Value>,
        run_id: &str,
    ) -> Result<Map<String, Value>, EvalError> {
        let empty_env = Map::new();
        let steps = Default::default();
        let scope = Scope {
            inputs,
            env: &empty_env,
            steps: &steps,
            run_id,
            dry_run: false,
        };
        self.env
            .iter()
            .map(|(name, t)| {
                let v = t
                    .eval_string(&scope)
                    .map_err(|e| EvalError(format!("env `{name}`: {e}")))?;
                Ok((name.clone(), Value::String(v)))
            })
            .collect()
    }

    /// The run's concurrency key, when the workflow has one: its `concurrency` template over
    /// the run's inputs, env and id. Runs with the same key never overlap.
    pub fn concurrency_key(
        &self,
        inputs: &Map<String, Value>,
        run_id: &str,
    ) -> Result<Option<String>, EvalError> {
        let Some(concurrency) = &self.concurrency else {
            return Ok(None);
        };
        let env = self.resolve_env(inputs, run_id)?;
        let steps = Default::default();
        let scope = Scope {
            inputs,
            env: &env,
            steps: &steps,
            run_id,
            dry_run: false,
        };
        concurrency.key.eval_string(&scope).map(Some)
    }
}

/// Reads `text` as a value of `kind`.
pub(crate) fn parse_value(kind: &InputKind, text: &str) -> Result<Value, String> {
    match kind {
        InputKind::String => Ok(Value::String(text.to_string())),
        InputKind::Bool => match text {
            "true" => Ok(Value::Bool(true)),
            "false" => Ok(Value::Bool(false)),
            _ => Err(format!(
                "`{text}` is not a bool; expected `true` or `false`"
            )),
        },
        InputKind::Number => text
            .trim()
            .parse::<i64>()
            .map(Number::from)
            .ok()
            .or_else(|| text.trim().parse::<f64>().ok().and_then(Number::from_f64))
            .map(Value::Number)
            .ok_or_else(|| format!("`{text}` is not a number")),
        InputKind::Choice(choices) => {
            if choices.iter().any(|c| c == text) {
                Ok(Value::String(text.to_string()))
            } else {
                Err(format!(
                    "`{text}` is not one of {}{}",
                    choices
                        .iter()
                        .map(|c| format!("`{c}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    crate::did_you_mean(text, choices.iter().map(String::as_str))
                ))
            }
        }
    }
}
