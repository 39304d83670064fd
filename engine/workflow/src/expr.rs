//! The `${{ ... }}` language: literals, paths into the run's state, comparisons and boolean
//! logic. There are deliberately no function calls and no arithmetic: a workflow file should
//! never be able to compute its way into surprising behaviour.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Number, Value};

/// The deepest an expression may nest, counting each `!`, each pair of parentheses and each
/// `&&` or `||` of a chain as a level. Parsing, evaluating and dropping an expression recurse
/// once per level, so without a bound a one-megabyte workflow file of `!!!…` or `((…))` or
/// `x && x && …` overflows the stack of the thread that loads it, and takes the daemon down
/// with it. Conditions people write nest a few levels and chain a few dozen terms at most.
pub const MAX_EXPR_DEPTH: usize = 100;

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

/// What a finished step exposes to later expressions. `status` is `succeeded`, `failed` or
/// `skipped`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepState {
    pub status: String,
    pub outputs: Map<String, Value>,
}

/// An expression that could not be evaluated, e.g. comparing a string with a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvalError(pub String);

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EvalError {}

/// One step of a path: `.name` or `['name']`, or `[0]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Lit(Value),
    Path(Vec<Seg>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
}

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub struct Expr {
    node: Node,
    source: String,
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Str(String),
    Num(Number),
    Ident(String),
    Dot,
    LBrack,
    RBrack,
    LParen,
    RParen,
    Not,
    And,
    Or,
    Cmp(Cmp),
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        match c {
            c if c.is_whitespace() => i += 1,
            '\'' | '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated string in `{src}`")),
                        Some('\\') if chars.get(i + 1).is_some() => {
                            s.push(chars[i + 1]);
                            i += 2;
                        }
                        Some(&q) if q == c => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            s.push(other);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(s));
            }
            '0'..='9' | '-' if c != '-' || next.is_some_and(|n| n.is_ascii_digit()) => {
                let start = i;
                i += 1;
                while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let num = if let Ok(n) = text.parse::<i64>() {
                    Number::from(n)
                } else {
                    text.parse::<f64>()
                        .ok()
                        .and_then(Number::from_f64)
                        .ok_or_else(|| format!("invalid number `{text}`"))?
                };
                out.push(Tok::Num(num));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == '-')
                {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
            _ => {
                let two = |a: char, b: char| c == a && next == Some(b);
                let (tok, len) = if two('=', '=') {
                    (Tok::Cmp(Cmp::Eq), 2)
                } else if two('!', '=') {
                    (Tok::Cmp(Cmp::Ne), 2)
                } else if two('<', '=') {
                    (Tok::Cmp(Cmp::Le), 2)
                } else if two('>', '=') {
                    (Tok::Cmp(Cmp::Ge), 2)
                } else if two('&', '&') {
                    (Tok::And, 2)
                } else if two('|', '|') {
                    (Tok::Or, 2)
                } else {
                    let tok = match c {
                        '<' => Tok::Cmp(Cmp::Lt),
                        '>' => Tok::Cmp(Cmp::Gt),
                        '!' => Tok::Not,
                        '.' => Tok::Dot,
                        '[' => Tok::LBrack,
                        ']' => Tok::RBrack,
                        '(' => Tok::LParen,
                        ')' => Tok::RParen,
                        '=' => {
                            return Err(format!("unexpected `=` in `{src}`; use `==` to compare"));
                        }
                        _ => return Err(format!("unexpected `{c}` in `{src}`")),
                    };
                    (tok, 1)
                };
                out.push(tok);
                i += len;
            }
        }
    }
    Ok(out)
}

struct P<'a> {
    toks: Vec<Tok>,
    pos: usize,
    src: &'a str,
    /// How many levels deep the parser is, see [`MAX_EXPR_DEPTH`].
    depth: usize,
}

impl P<'_> {
    /// Goes one level deeper, or refuses to past [`MAX_EXPR_DEPTH`].
    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            // The source can be a megabyte long: its start is enough to find it.
            let start: String = self.src.trim().chars().take(40).collect();
            return Err(format!(
                "the expression starting `{start}` nests deeper than {MAX_EXPR_DEPTH} levels of `!`, `(` and `&&`/`||`; split it into smaller conditions"
            ));
        }
        Ok(())
    }
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn bump(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Node, String> {
        // A chain `a || b || c` is a tree as deep as it is long.
        let depth = self.depth;
        let mut lhs = self.and()?;
        while self.peek() == Some(&Tok::Or) {
            self.pos += 1;
            self.deeper()?;
            lhs = Node::Or(Box::new(lhs), Box::new(self.and()?));
        }
        self.depth = depth;
        Ok(lhs)
    }
    fn and(&mut self) -> Result<Node, String> {
        let depth = self.depth;
        let mut lhs = self.cmp()?;
        while self.peek() == Some(&Tok::And) {
            self.pos += 1;
            self.deeper()?;
            lhs = Node::And(Box::new(lhs), Box::new(self.cmp()?));
        }
        self.depth = depth;
        Ok(lhs)
    }
    fn cmp(&mut self) -> Result<Node, String> {
        let lhs = self.unary()?;
        if let Some(Tok::Cmp(op)) = self.peek().cloned() {
            self.pos += 1;
            let rhs = self.unary()?;
            if let Some(Tok::Cmp(_)) = self.peek() {
                return Err(format!(
                    "comparisons cannot be chained in `{}`; use `&&`",
                    self.src
                ));
            }
            return Ok(Node::Cmp(op, Box::new(lhs), Box::new(rhs)));
        }
        Ok(lhs)
    }
    fn unary(&mut self) -> Result<Node, String> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.primary()
    }
    fn primary(&mut self) -> Result<Node, String> {
        match self.bump() {
            Some(Tok::Str(s)) => Ok(Node::Lit(Value::String(s))),
            Some(Tok::Num(n)) => Ok(Node::Lit(Value::Number(n))),
            Some(Tok::LParen) => {
                self.deeper()?;
                let inner = self.or()?;
                self.depth -= 1;
                match self.bump() {
                    Some(Tok::RParen) => Ok(inner),
                    _ => Err(format!("missing `)` in `{}`", self.src)),
                }
            }
            Some(Tok::Ident(id)) => match id.as_str() {
                "true" => Ok(Node::Lit(Value::Bool(true))),
                "false" => Ok(Node::Lit(Value::Bool(false))),
                "null" => Ok(Node::Lit(Value::Null)),
                _ => self.path(id),
            },
            Some(t) => Err(format!("unexpected {} in `{}`", describe(&t), self.src)),
            None => Err(format!("unexpected end of expression `{}`", self.src)),
        }
    }
    fn path(&mut self, first: String) -> Result<Node, String> {
        let mut segs = vec![Seg::Key(first)];
        loop {
            match self.peek() {
                Some(Tok::Dot) => {
                    self.pos += 1;
                    match self.bump() {
                        Some(Tok::Ident(id)) => segs.push(Seg::Key(id)),
                        _ => return Err(format!("expected a name after `.` in `{}`", self.src)),
                    }
                }
                Some(Tok::LBrack) => {
                    self.pos += 1;
                    let seg = match self.bump() {
                        Some(Tok::Str(s)) => Seg::Key(s),
                        Some(Tok::Num(n)) if n.as_u64().is_some() => {
                            Seg::Index(n.as_u64().unwrap_or_default() as usize)
                        }
                        _ => {
                            return Err(format!(
                                "expected a quoted key or an index inside `[]` in `{}`",
                                self.src
                            ));
                        }
                    };
                    if self.bump() != Some(Tok::RBrack) {
                        return Err(format!("missing `]` in `{}`", self.src));
                    }
                    segs.push(seg);
                }
                Some(Tok::LParen) => {
                    return Err(format!(
                        "`{}(…)`: expressions have no functions; to run a step after a failure put it in `on_failure:` (or `finally:` to run it always), or test `steps.<id>.status`",
                        path_text(&segs)
                    ));
                }
                _ => return Ok(Node::Path(segs)),
            }
        }
    }
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Str(s) => format!("string '{s}'"),
        Tok::Num(n) => format!("number `{n}`"),
        Tok::Ident(i) => format!("`{i}`"),
        Tok::Dot => "`.`".into(),
        Tok::LBrack => "`[`".into(),
        Tok::RBrack => "`]`".into(),
        Tok::LParen => "`(`".into(),
        Tok::RParen => "`)`".into(),
        Tok::Not => "`!`".into(),
        Tok::And => "`&&`".into(),
        Tok::Or => "`||`".into(),
        Tok::Cmp(_) => "a comparison".into(),
    }
}

/// Whether a value counts as true in `if:`, `!`, `&&` and `||`.
pub(crate) fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn compare(op: Cmp, a: &Value, b: &Value) -> Result<bool, EvalError> {
    use std::cmp::Ordering;
    let ord: Option<Ordering> = match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64().partial_cmp(&y.as_f64()),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    };
    match op {
        Cmp::Eq => Ok(ord.map_or(a == b, |o| o == Ordering::Equal)),
        Cmp::Ne => Ok(ord.map_or(a != b, |o| o != Ordering::Equal)),
        _ => {
            let Some(o) = ord else {
                return Err(EvalError(format!(
                    "cannot order `{a}` and `{b}`; `<`, `<=`, `>` and `>=` compare two numbers or two strings"
                )));
            };
            Ok(match op {
                Cmp::Lt => o.is_lt(),
                Cmp::Le => o.is_le(),
                Cmp::Gt => o.is_gt(),
                _ => o.is_ge(),
            })
        }
    }
}

fn index<'v>(mut v: &'v Value, segs: &[Seg]) -> Option<&'v Value> {
    for s in segs {
        v = match (s, v) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            (Seg::Key(k), Value::Array(a)) => a.get(k.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

fn lookup(segs: &[Seg], scope: &Scope) -> Result<Value, EvalError> {
    let key = |i: usize| match segs.get(i) {
        Some(Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let from_map = |m: &Map<String, Value>| {
        key(1)
            .and_then(|k| m.get(k))
            .and_then(|v| index(v, &segs[2..]))
            .cloned()
            .unwrap_or(Value::Null)
    };
    match key(0) {
        Some("inputs") => Ok(from_map(scope.inputs)),
        Some("env") => Ok(from_map(scope.env)),
        Some("run") if key(1) == Some("id") && segs.len() == 2 => {
            Ok(Value::String(scope.run_id.to_string()))
        }
        Some("run") if key(1) == Some("dry_run") && segs.len() == 2 => {
            Ok(Value::Bool(scope.dry_run))
        }
        Some("steps") => {
            let Some(state) = key(1).and_then(|id| scope.steps.get(id)) else {
                return Ok(Value::Null);
            };
            match key(2) {
                Some("status") => Ok(Value::String(state.status.clone())),
                Some("outputs") => {
                    let outputs = Value::Object(state.outputs.clone());
                    Ok(index(&outputs, &segs[3..]).cloned().unwrap_or(Value::Null))
                }
                _ => Ok(Value::Null),
            }
        }
        _ => Err(EvalError(format!("unknown name `{}`", path_text(segs)))),
    }
}

pub(crate) fn path_text(segs: &[Seg]) -> String {
    let mut s = String::new();
    for (i, seg) in segs.iter().enumerate() {
        match seg {
            Seg::Key(k) if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                if i > 0 {
                    s.push('.');
                }
                s.push_str(k);
            }
            Seg::Key(k) => s.push_str(&format!("['{k}']")),
            Seg::Index(n) => s.push_str(&format!("[{n}]")),
        }
    }
    s
}

fn eval(node: &Node, scope: &Scope) -> Result<Value, EvalError> {
    Ok(match node {
        Node::Lit(v) => v.clone(),
        Node::Path(segs) => lookup(segs, scope)?,
        Node::Not(e) => Value::Bool(!truthy(&eval(e, scope)?)),
        Node::And(a, b) => Value::Bool(truthy(&eval(a, scope)?) && truthy(&eval(b, scope)?)),
        Node::Or(a, b) => Value::Bool(truthy(&eval(a, scope)?) || truthy(&eval(b, scope)?)),
        Node::Cmp(op, a, b) => Value::Bool(compare(*op, &eval(a, scope)?, &eval(b, scope)?)?),
    })
}

fn paths<'a>(node: &'a Node, out: &mut Vec<&'a [Seg]>) {
    match node {
        Node::Lit(_) => {}
        Node::Path(p) => out.push(p),
        Node::Not(e) => paths(e, out),
        Node::And(a, b) | Node::Or(a, b) | Node::Cmp(_, a, b) => {
            paths(a, out);
            paths(b, out);
        }
    }
}

impl Expr {
    /// Parses an expression, without the `${{ }}` around it.
    pub fn parse(src: &str) -> Result<Expr, String> {
        let toks = lex(src)?;
        if toks.is_empty() {
            return Err("empty expression".to_string());
        }
        let mut p = P {
            toks,
            pos: 0,
            src,
            depth: 0,
        };
        let node = p.or()?;
        if let Some(t) = p.peek() {
            return Err(format!("unexpected {} in `{src}`", describe(t)));
        }
        Ok(Expr {
            node,
            source: src.trim().to_string(),
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

    pub fn eval(&self, scope: &Scope) -> Result<Value, EvalError> {
        eval(&self.node, scope)
    }

    pub fn eval_bool(&self, scope: &Scope) -> Result<bool, EvalError> {
        Ok(truthy(&self.eval(scope)?))
    }

    /// The expression as written, trimmed.
    pub fn source(&self) -> &str {
        &self.source
    }

    pub(crate) fn paths(&self) -> Vec<&[Seg]> {
        let mut out = Vec::new();
        paths(&self.node, &mut out);
        out
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
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

    /// Evaluates the template as text: strings as they are, null as nothing, others as JSON.
    pub fn eval_string(&self, scope: &Scope) -> Result<String, EvalError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(e) => match e.eval(scope)? {
                    Value::String(s) => out.push_str(&s),
                    Value::Null => {}
                    v => out.push_str(&v.to_string()),
                },
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

/// The byte offset of the `}}` closing an expression body, skipping quoted strings.
fn closing(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut quote = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match quote {
            Some(_) if b == b'\\' => i += 1,
            Some(q) if b == q => quote = None,
            Some(_) => {}
            None if b == b'\'' || b == b'"' => quote = Some(b),
            None if b == b'}' && bytes.get(i + 1) == Some(&b'}') => return Some(i),
            None => {}
        }
        i += 1;
    }
    None
}

/// What a template or condition may refer to, for checking before anything runs.
pub(crate) struct RefRules<'a> {
    pub inputs: &'a [&'a str],
    /// `None` where `env` may not be used (in `env:` itself).
    pub env: Option<&'a [&'a str]>,
    /// Every step id in the file, and those upstream of the user; `None` where steps may not be
    /// referred to.
    pub steps: Option<(&'a [&'a str], &'a [&'a str])>,
}

const ROOTS: &[&str] = &["inputs", "env", "steps", "run"];

/// The values `steps.<id>.status` takes.
pub(crate) const STEP_STATUSES: &[&str] = &["succeeded", "failed", "skipped", "cancelled"];

/// Problems with the names `expr` refers to, and with what it compares them to, as messages.
pub(crate) fn check_refs(expr: &Expr, rules: &RefRules) -> Vec<String> {
    let mut problems: Vec<String> = expr
        .paths()
        .into_iter()
        .filter_map(|p| check_path(p, rules).err())
        .collect();
    status_literals(&expr.node, &mut problems);
    problems
}

/// Comparisons of `steps.<id>.status` with a string it never equals, such as GitHub Actions'
/// `'success'`: the condition would be silently false (or true) on every run.
fn status_literals(node: &Node, problems: &mut Vec<String>) {
    match node {
        Node::Lit(_) | Node::Path(_) => {}
        Node::Not(e) => status_literals(e, problems),
        Node::And(a, b) | Node::Or(a, b) => {
            status_literals(a, problems);
            status_literals(b, problems);
        }
        Node::Cmp(_, a, b) => {
            for (path, literal) in [(a, b), (b, a)] {
                let (Node::Path(segs), Node::Lit(Value::String(text))) = (&**path, &**literal)
                else {
                    continue;
                };
                let is_status = segs.len() == 3
                    && segs[0] == Seg::Key("steps".into())
                    && segs[2] == Seg::Key("status".into());
                if is_status && !STEP_STATUSES.contains(&text.as_str()) {
                    let hint = crate::suggest(&text.to_lowercase(), STEP_STATUSES.iter().copied())
                        .map(|s| format!("; did you mean '{s}'?"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "`{}` is never '{text}': a step's status is 'succeeded', 'failed', 'skipped' or 'cancelled'{hint}",
                        path_text(segs)
                    ));
                }
            }
        }
    }
}

fn check_path(segs: &[Seg], rules: &RefRules) -> Result<(), String> {
    let key = |i: usize| match segs.get(i) {
        Some(Seg::Key(k)) => Some(k.as_str()),
        _ => None,
    };
    let root = key(0).unwrap_or_default();
    let only_inputs = "here only `inputs` and `run.id` may be used";
    match root {
        "inputs" => {
            let Some(name) = key(1) else {
                return Err("`inputs` needs a name, e.g. `inputs.version`".into());
            };
            if !rules.inputs.contains(&name) {
                return Err(format!(
                    "unknown input `{name}`{}",
                    crate::did_you_mean(name, rules.inputs.iter().copied())
                ));
            }
        }
        "env" => {
            let Some(env) = rules.env else {
                return Err(format!(
                    "`{}` is not available; {only_inputs}",
                    path_text(segs)
                ));
            };
            let Some(name) = key(1) else {
                return Err("`env` needs a name, e.g. `env.REGION`".into());
            };
            if !env.contains(&name) {
                return Err(format!(
                    "unknown env `{name}`{}",
                    crate::did_you_mean(name, env.iter().copied())
                ));
            }
        }
        "run" => match (key(1), segs.len()) {
            (Some("id"), 2) => {}
            (Some("dry_run"), 2) if rules.steps.is_some() => {}
            (Some("dry_run"), 2) => {
                return Err(format!(
                    "`run.dry_run` is not available here; {only_inputs}"
                ));
            }
            _ => {
                return Err(format!(
                    "unknown name `{}`; expected `run.id` or `run.dry_run`",
                    path_text(segs)
                ));
            }
        },
        "steps" => {
            let Some((all, upstream)) = rules.steps else {
                return Err(format!(
                    "`{}` is not available; {only_inputs}",
                    path_text(segs)
                ));
            };
            let Some(id) = key(1) else {
                return Err("`steps` needs a step id, e.g. `steps.build.outputs.url`".into());
            };
            if !all.contains(&id) {
                return Err(format!(
                    "unknown step `{id}`{}",
                    crate::did_you_mean(id, all.iter().copied())
                ));
            }
            if !upstream.contains(&id) {
                return Err(format!(
                    "step `{id}` is not upstream of this step, so its results may not exist yet; add it to `needs`"
                ));
            }
            match key(2) {
                Some("outputs") => {}
                Some("status") if segs.len() == 3 => {}
                _ => {
                    return Err(format!(
                        "unknown name `{}`; expected `steps.{id}.outputs.<key>` or `steps.{id}.status`",
                        path_text(segs)
                    ));
                }
            }
        }
        _ => {
            return Err(format!(
                "unknown name `{root}`{}",
                crate::suggest(root, ROOTS.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; expected `inputs`, `env`, `steps` or `run`".into())
            ));
        }
    }
    Ok(())
}
