//! A step's `with:` block: its value with templated strings, resolution at run time, and
//! checking against the JSON Schema a plugin publishes for its configuration.

use serde_json::{Map, Value};

use crate::expr::{EvalError, Scope, Template};
use crate::{Diagnostic, Step, Workflow};

/// A `with:` value whose string leaves may hold templates.
#[derive(Clone, Debug, PartialEq)]
pub enum ConfigValue {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(Template),
    Array(Vec<ConfigValue>),
    /// In file order.
    Object(Vec<(String, ConfigValue)>),
}

impl ConfigValue {
    /// Evaluates every template, giving the configuration the plugin receives.
    pub fn resolve(&self, scope: &Scope) -> Result<Value, EvalError> {
        Ok(match self {
            ConfigValue::Null => Value::Null,
            ConfigValue::Bool(b) => Value::Bool(*b),
            ConfigValue::Number(n) => Value::Number(n.clone()),
            ConfigValue::String(t) => t.eval(scope)?,
            ConfigValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| v.resolve(scope))
                    .collect::<Result<_, _>>()?,
            ),
            ConfigValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), v.resolve(scope)?)))
                    .collect::<Result<Map<_, _>, EvalError>>()?,
            ),
        })
    }

    /// The value with templates left as their source text, plus the JSON pointer segments of
    /// every templated leaf: those are unknown until run time.
    fn shape(&self, at: &mut Vec<String>, templated: &mut Vec<Vec<String>>) -> Value {
        match self {
            ConfigValue::Null => Value::Null,
            ConfigValue::Bool(b) => Value::Bool(*b),
            ConfigValue::Number(n) => Value::Number(n.clone()),
            ConfigValue::String(t) => {
                if !t.is_literal() {
                    templated.push(at.clone());
                }
                Value::String(t.source().to_string())
            }
            ConfigValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        at.push(i.to_string());
                        let out = v.shape(at, templated);
                        at.pop();
                        out
                    })
                    .collect(),
            ),
            ConfigValue::Object(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| {
                        at.push(k.clone());
                        let out = v.shape(at, templated);
                        at.pop();
                        (k.clone(), out)
                    })
                    .collect(),
            ),
        }
    }
}

/// A plugin's configuration schema, compiled once and reused for every run.
pub struct ConfigSchema {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for ConfigSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConfigSchema")
    }
}

impl ConfigSchema {
    pub fn compile(schema_json: &str) -> Result<Self, String> {
        let schema: Value = serde_json::from_str(schema_json)
            .map_err(|e| format!("the plugin's config schema is not valid JSON: {e}"))?;
        let validator = jsonschema::validator_for(&schema)
            .map_err(|e| format!("the plugin's config schema is not a valid JSON Schema: {e}"))?;
        Ok(ConfigSchema { validator })
    }

    /// Checks a resolved configuration; each message names the offending key, as in
    /// `` `with.keep`: "five" is not of type "integer" ``.
    pub fn validate(&self, config: &Value) -> Result<(), Vec<String>> {
        let errors: Vec<String> = self
            .errors(config)
            .into_iter()
            .map(|(path, msg, _)| format!("`{}`: {msg}", with_path(&path)))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Every error as (instance path segments, message, segments of the key to point at).
    fn errors(&self, config: &Value) -> Vec<(Vec<String>, String, Vec<String>)> {
        self.validator
            .iter_errors(config)
            .map(|e| {
                let path: Vec<String> = e
                    .instance_path()
                    .segments()
                    .map(|s| s.to_string())
                    .collect();
                let mut point_at = path.clone();
                // An unexpected key is best shown where it is written, not at its parent.
                if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
                    e.kind()
                    && let Some(first) = unexpected.first()
                {
                    point_at.push(first.clone());
                }
                (path, e.to_string(), point_at)
            })
            .collect()
    }
}

/// Runtime form: checks a resolved `config` against a compiled `schema`.
pub fn validate_config(schema: &ConfigSchema, config: &Value) -> Result<(), Vec<String>> {
    schema.validate(config)
}

/// `with.a.b[0]` for the segments `a`, `b`, `0` under `with`.
fn with_path(segments: &[String]) -> String {
    let mut s = "with".to_string();
    for seg in segments {
        if seg.parse::<usize>().is_ok() {
            s.push_str(&format!("[{seg}]"));
        } else {
            s.push('.');
            s.push_str(seg);
        }
    }
    s
}

/// Checks `step`'s `with:` block against a plugin's configuration schema before anything runs.
/// Templated values are unknown until run time, so errors on or inside them are skipped.
pub fn check_config(workflow: &Workflow, step: &Step, schema_json: &str) -> Vec<Diagnostic> {
    match ConfigSchema::compile(schema_json) {
        Ok(schema) => check_config_with(workflow, step, &schema),
        Err(e) => vec![Diagnostic {
            file: workflow.file.clone(),
            location: step.key_locations.find("uses").or(Some(step.location)),
            message: format!("step `{}`: {e}", step.id),
        }],
    }
}

/// [`check_config`] with a schema compiled once, for workflows whose steps share a plugin.
pub fn check_config_with(
    workflow: &Workflow,
    step: &Step,
    schema: &ConfigSchema,
) -> Vec<Diagnostic> {
    let diag = |path: &str, message: String| Diagnostic {
        file: workflow.file.clone(),
        location: step.key_locations.find(path).or(Some(step.location)),
        message: format!("step `{}`: {message}", step.id),
    };
    let mut templated = Vec::new();
    let shape = step.with.shape(&mut Vec::new(), &mut templated);
    let mut out: Vec<Diagnostic> = schema
        .errors(&shape)
        .into_iter()
        .filter(|(path, _, _)| !templated.iter().any(|t| path.starts_with(t)))
        .map(|(path, msg, point_at)| {
            let p = with_path(&path);
            diag(&with_path(&point_at), format!("`{p}`: {msg}"))
        })
        .collect();
    out.sort_by_key(|d| d.location);
    out
}
