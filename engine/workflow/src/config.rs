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

    /// The value itself when no string in it holds an expression: it is then the same in every
    /// run, so it can be checked and serialised once, when the workflow is prepared.
    pub fn literal(&self) -> Option<Value> {
        let mut templated = Vec::new();
        let value = self.shape(&mut Vec::new(), &mut templated);
        templated.is_empty().then_some(value)
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
    schema: Value,
    /// Every property name the schema knows, for did-you-mean.
    keys: Vec<String>,
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
        let mut keys = Vec::new();
        property_names(&schema, &mut keys);
        keys.sort();
        keys.dedup();
        Ok(ConfigSchema {
            validator,
            schema,
            keys,
        })
    }

    /// The schema as the plugin published it.
    pub fn schema(&self) -> &Value {
        &self.schema
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
                let message = self.message(&e, &path);
                (path, message, point_at)
            })
            .collect()
    }

    /// A validation error in words a workflow author acts on: unknown keys get a did-you-mean,
    /// a key required or refused by one form of the block names the form, and jsonschema's
    /// own wording about `anyOf`/`oneOf` never shows.
    fn message(&self, e: &jsonschema::ValidationError<'_>, path: &[String]) -> String {
        use jsonschema::error::ValidationErrorKind as Kind;
        let schema_path: Vec<String> = e.schema_path().segments().map(|s| s.to_string()).collect();
        let form = form_of(&self.schema, &schema_path)
            .map(|form| format!(" with {form}"))
            .unwrap_or_default();
        match e.kind() {
            Kind::AdditionalProperties { unexpected } => unexpected
                .iter()
                .map(|key| {
                    format!(
                        "unknown key `{key}`{}",
                        crate::did_you_mean(key, self.keys.iter().map(String::as_str))
                    )
                })
                .collect::<Vec<_>>()
                .join("; "),
            Kind::Required { property } => {
                let key = property.as_str().map_or_else(|| property.to_string(), str::to_owned);
                format!("`{key}` is required{form}")
            }
            Kind::FalseSchema => {
                let key = path.last().cloned().unwrap_or_default();
                format!("`{key}` is not used{form}; remove it")
            }
            Kind::AnyOf { .. } | Kind::OneOfNotValid { .. } | Kind::OneOfMultipleValid { .. } => {
                match required_alternatives(&self.schema, &schema_path) {
                    Some(keys) => format!("needs one of {keys}"),
                    None => "fits none of the forms the plugin accepts; `shiphat plugin inspect` shows its keys".to_owned(),
                }
            }
            Kind::Not { .. } => format!("is not allowed{form}"),
            Kind::Enum { options } => format!(
                "{} is not one of {}",
                e.instance(),
                options
                    .as_array()
                    .map(|o| o.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                    .unwrap_or_else(|| options.to_string())
            ),
            _ => e.to_string(),
        }
    }
}

/// For an `anyOf`/`oneOf` whose branches only require keys (`[{required: [a]}, {required:
/// [b]}]`), those keys as `` `a` or `b` ``.
fn required_alternatives(schema: &Value, schema_path: &[String]) -> Option<String> {
    let mut at = schema;
    for segment in schema_path {
        at = match at {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    let branches = at.as_array()?;
    let keys: Vec<String> = branches
        .iter()
        .map(|b| {
            let map = b.as_object()?;
            let required = map.get("required")?.as_array()?;
            (map.len() == 1).then(|| {
                required
                    .iter()
                    .filter_map(|k| Some(format!("`{}`", k.as_str()?)))
                    .collect::<Vec<_>>()
                    .join(" and ")
            })
        })
        .collect::<Option<_>>()?;
    Some(keys.join(" or "))
}

/// Collects the names under every `properties` of `schema`, at any depth.
fn property_names(schema: &Value, out: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                out.extend(props.keys().cloned());
            }
            for value in map.values() {
                property_names(value, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| property_names(v, out)),
        _ => {}
    }
}

/// For an error found under an `if`/`then`, the form the `if` describes, as the constants it
/// tests: `` `strategy: symlink` `` (or `` `strategy: symlink`, `action: deploy` ``).
fn form_of(schema: &Value, schema_path: &[String]) -> Option<String> {
    let then = schema_path.iter().rposition(|s| s == "then")?;
    let mut at = schema;
    for segment in &schema_path[..then] {
        at = match at {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    let props = at.get("if")?.get("properties")?.as_object()?;
    let consts: Vec<String> = props
        .iter()
        .filter_map(|(k, v)| Some(format!("`{k}: {}`", v.get("const")?.as_str()?)))
        .collect();
    (!consts.is_empty()).then(|| consts.join(", "))
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
    let mut annotated = Vec::new();
    annotations(&schema.schema, &mut Vec::new(), &mut annotated);
    for (keys, access) in annotated {
        let mut found = Vec::new();
        literals_at(&step.with, &keys, &mut Vec::new(), &mut found);
        for (path, text) in found {
            if let Some(problem) = missing_grant(workflow, step, access, &text) {
                out.push(diag(
                    &with_path(&path),
                    format!("`{}`: {problem}", with_path(&path)),
                ));
            }
        }
    }
    out.sort_by_key(|d| d.location);
    out
}

/// The annotation a plugin puts on a property of its config schema to say what the value is:
/// a path it reads, a path it writes, or a URL it calls. `validate` then checks the value
/// against the step's `allow` before anything runs.
pub const GRANT_ANNOTATION: &str = "x-shiphat-grant";

/// What a `x-shiphat-grant` annotation says a value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Read,
    Write,
    Http,
}

/// Every annotated property of `schema`, as the keys leading to it (`*` for array items).
fn annotations(schema: &Value, at: &mut Vec<String>, out: &mut Vec<(Vec<String>, Access)>) {
    let access = match schema.get(GRANT_ANNOTATION).and_then(Value::as_str) {
        Some("read") => Some(Access::Read),
        Some("write") => Some(Access::Write),
        Some("http") => Some(Access::Http),
        _ => None,
    };
    if let Some(access) = access
        && !out.iter().any(|(keys, _)| keys == at)
    {
        out.push((at.clone(), access));
    }
    if let Some(Value::Object(props)) = schema.get("properties") {
        for (key, sub) in props {
            at.push(key.clone());
            annotations(sub, at, out);
            at.pop();
        }
    }
    if let Some(items) = schema.get("items") {
        at.push("*".into());
        annotations(items, at, out);
        at.pop();
    }
}

/// The literal strings of `value` at `keys` (`*` matching every array item), with their
/// paths; templated values are unknown until run time and left out.
fn literals_at(
    value: &ConfigValue,
    keys: &[String],
    at: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, String)>,
) {
    match (keys.split_first(), value) {
        (None, ConfigValue::String(t)) if t.is_literal() => {
            out.push((at.clone(), t.source().to_owned()));
        }
        (None, ConfigValue::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                at.push(i.to_string());
                literals_at(item, keys, at, out);
                at.pop();
            }
        }
        (Some((first, rest)), ConfigValue::Object(entries)) => {
            for (key, sub) in entries.iter().filter(|(k, _)| k == first) {
                at.push(key.clone());
                literals_at(sub, rest, at, out);
                at.pop();
            }
        }
        (Some((first, rest)), ConfigValue::Array(items)) if first == "*" => {
            for (i, item) in items.iter().enumerate() {
                at.push(i.to_string());
                literals_at(item, rest, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

/// Why `allow` does not cover `text`, with the grant that would, or `None` when it does.
fn missing_grant(workflow: &Workflow, step: &Step, access: Access, text: &str) -> Option<String> {
    match access {
        Access::Read | Access::Write => {
            // A glob (`reports/*.xml`) needs the directory before its first wildcard.
            let plain = text.split(['*', '?', '[']).next().unwrap_or(text);
            let plain = if plain.len() < text.len() {
                plain.rsplit_once('/').map_or("", |(dir, _)| dir)
            } else {
                plain
            };
            let host = crate::grants::normalize(&workflow.base_dir.join(plain));
            let covers = |g: &crate::Grant| host.starts_with(&g.host_path);
            let (granted, key) = match access {
                Access::Write => (step.allow.write.iter().any(covers), "write"),
                _ => (
                    step.allow.read.iter().chain(&step.allow.write).any(covers),
                    "read",
                ),
            };
            let verb = if access == Access::Write {
                "writes"
            } else {
                "reads"
            };
            let dir = if plain.is_empty() { "." } else { plain };
            (!granted).then(|| {
                format!("the step {verb} `{text}` but `allow.{key}` does not grant it; add `{dir}` (or a directory above it) to `allow.{key}`")
            })
        }
        Access::Http => {
            let (host, port) = url_host_port(text)?;
            let granted = step.allow.http.iter().any(|p| p.matches(&host, port));
            let pattern = if port == 80 || port == 443 {
                host.clone()
            } else {
                format!("{host}:{port}")
            };
            (!granted).then(|| {
                format!("the step calls `{text}` but `allow.http` does not grant `{pattern}`; add `{pattern}` to `allow.http`")
            })
        }
    }
}

/// The host and port a `http://` or `https://` URL names; `None` for anything else.
fn url_host_port(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((format!("[{host}]"), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default)),
    }
}
