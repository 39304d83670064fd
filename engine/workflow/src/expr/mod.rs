//! The `${{ ... }}` language, with GitHub Actions' meaning: its literals, operators and
//! coercions, case-insensitive names, the `*` filter, its pure functions (`contains`,
//! `startsWith`, `endsWith`, `format`, `join`, `toJSON`, `fromJSON`, `case`) and, in `if:`, its
//! status functions. GitHub's own test data is the reference (docs/workflows.md, "Coming from
//! GitHub Actions", lists what differs and why).
//!
//! Nothing in an expression can run code: every function is a pure function of its arguments,
//! with no access to files, the network or the clock, and the depth, length and memory of an
//! evaluation are bounded.

mod check;
mod eval;
mod lex;
mod parse;
mod value;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

pub(crate) use check::{Changes, RefRules, TypeOf, check_refs, meaning_changes};
pub use eval::MAX_EXPR_MEMORY;
pub use lex::MAX_EXPR_LENGTH;
pub use parse::MAX_EXPR_DEPTH;
use parse::Node;
pub(crate) use value::Kind;
/// What an expression can see while a run is going.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub inputs: &'a Map<String, Value>,
    pub env: &'a Map<String, Value>,
    pub steps: &'a BTreeMap<String, StepState>,
    pub run_id: &'a str,
    /// `run.dry_run`: whether the run only reports what it would do.
    pub dry_run: bool,
}

/// What a finished step exposes to later expressions. `status` is `succeeded`, `failed`,
/// `skipped` or `cancelled`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepState {
    pub status: String,
    pub outputs: Map<String, Value>,
}

/// How the run stands when a step's `if:` is decided: what the status functions answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status {
    /// `success()`: every step it `needs` succeeded (or failed with `continue_on_error`), no
    /// step of its section has failed, and its section was not stopped.
    pub success: bool,
    /// `failure()`: a step of the run has failed (one with `continue_on_error` does not count).
    pub failure: bool,
    /// `cancelled()`: the run was cancelled.
    pub cancelled: bool,
}

/// An expression that could not be evaluated, e.g. `fromJSON` of text that is not JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    node: Node,
    source: String,
    /// A string literal holds a backslash: `validate` notes that it is now kept as written.
    backslash: bool,
}

impl Expr {
    /// Parses an expression, without the `${{ }}` around it. An empty one is `null`.
    pub fn parse(src: &str) -> Result<Expr, String> {
        let src = src.trim();
        let mut notes = lex::Notes::default();
        let toks = lex::lex(src, &mut notes)?;
        let node = parse::Parser::new(toks, src).parse()?;
        Ok(Expr {
            node,
            source: src.to_string(),
            backslash: notes.backslash,
        })
    }

    /// Parses an `if:` condition, written either bare or wrapped in one `${{ }}`.
    pub fn parse_condition(src: &str) -> Result<Expr, String> {
        let t = src.trim();
        if let Some(inner) = t.strip_prefix("${{").and_then(|r| r.strip_suffix("}}"))
            && !inner.contains("${{")
        {
            return Expr::parse(inner);
        }
        Expr::parse(t)
    }

    /// The expression's value, as JSON.
    pub fn eval(&self, scope: &Scope) -> Result<Value, EvalError> {
        let ev = eval::Ev::new(scope, None);
        Ok(ev.eval(&self.node)?.to_value())
    }

    /// Whether the expression is true by GitHub's rules: false for null, false, 0, NaN and
    /// '', true for everything else, `{}` and `[]` included.
    pub fn eval_bool(&self, scope: &Scope) -> Result<bool, EvalError> {
        let ev = eval::Ev::new(scope, None);
        Ok(ev.eval(&self.node)?.truthy())
    }

    /// Decides an `if:` as GitHub does: unless the condition calls a status function, it
    /// means `success() && (condition)`, and is false without evaluating the condition when
    /// `success()` is.
    pub fn eval_if(&self, scope: &Scope, status: Status) -> Result<bool, EvalError> {
        if !self.calls_status() && !status.success {
            return Ok(false);
        }
        let ev = eval::Ev::new(scope, Some(status));
        Ok(ev.eval(&self.node)?.truthy())
    }

    /// Whether it calls `success()`, `failure()`, `always()` or `cancelled()` anywhere.
    pub fn calls_status(&self) -> bool {
        fn walk(node: &Node) -> bool {
            match node {
                Node::Call(f, args) => f.is_status() || args.iter().any(walk),
                Node::Index(obj, index) => {
                    walk(obj) || matches!(&**index, parse::Index::Expr(e) if walk(e))
                }
                Node::Not(e) => walk(e),
                Node::Logic(_, args) => args.iter().any(walk),
                Node::Cmp(_, a, b) => walk(a) || walk(b),
                Node::Null | Node::Bool(_) | Node::Num(_) | Node::Str(_) | Node::Ctx(_) => false,
            }
        }
        walk(&self.node)
    }

    /// The expression as written, trimmed.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Whether `.name` can write this key, or it needs `['…']`.
pub(crate) fn is_plain_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[derive(Clone, Debug, PartialEq)]
enum Part {
    Lit(String),
    Expr(Expr),
}

/// A string that may hold `${{ }}` expressions.
#[derive(Clone, Debug, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(start) = rest.find("${{") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_string()));
            }
            let body = &rest[start + 3..];
            let end = closing(body)
                .ok_or_else(|| format!("`${{{{` without a closing `}}}}` in `{src}`"))?;
            parts.push(Part::Expr(Expr::parse(&body[..end])?));
            rest = &body[end + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template {
            source: src.to_string(),
            parts,
        })
    }

    /// Evaluates the template. One `${{ e }}` and nothing else gives `e`'s value with its type;
    /// anything else is text.
    pub fn eval(&self, scope: &Scope) -> Result<Value, EvalError> {
        if let [Part::Expr(e)] = self.parts.as_slice() {
            return e.eval(scope);
        }
        self.eval_string(scope).map(Value::String)
    }

    /// Evaluates the template as text: strings as they are, null as nothing, numbers and
    /// booleans as GitHub writes them, arrays and objects as JSON (where GitHub would write
    /// `Array` or `Object`, which no plugin can use).
    pub fn eval_string(&self, scope: &Scope) -> Result<String, EvalError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(e) => {
                    let v = eval::Ev::new(scope, None).eval(&e.node)?;
                    if v.is_primitive() {
                        out.push_str(&v.coerce_string());
                    } else {
                        out.push_str(&v.to_value().to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Whether the template holds no expression at all.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// The text, when the template holds no expression.
    pub fn literal(&self) -> Option<&str> {
        self.is_literal().then_some(self.source.as_str())
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            Part::Lit(_) => None,
        })
    }
}

/// The byte offset of the `}}` closing an expression body, skipping strings in single quotes
/// (a doubled quote inside one closes and reopens it, which comes to the same).
fn closing(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\'' => quoted = !quoted,
            b'}' if !quoted && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
    }
    None
}
