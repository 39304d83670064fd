//! What `validate` checks in an expression before anything runs: the names it refers to, the
//! statuses it compares with, and where its meaning changed when shiphat adopted GitHub
//! Actions' rules.

use std::borrow::Cow;

use super::parse::{Cmp, Func, Index, Node};
use super::value::{Kind, number_to_string, same_name};
use super::{Expr, eval::source_of, is_plain_name};

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

/// GitHub Actions contexts shiphat has no counterpart for, and what to use instead.
const GITHUB_ONLY: &[(&str, &str)] = &[
    (
        "github",
        "there is no `github` context; pass what you need as `inputs`",
    ),
    (
        "secrets",
        "secrets never appear in expressions; grant them to a step with `allow.secrets`, and the plugin reads them with `host.secret`",
    ),
    (
        "vars",
        "there is no `vars` context; use the workflow's `env` or `inputs`",
    ),
    (
        "needs",
        "steps refer to each other through `steps.<id>`, for the steps named in `needs`",
    ),
    ("matrix", "there is no `matrix`; write one step per case"),
    ("job", "there is no `job` context; `run.id` names the run"),
    (
        "runner",
        "there is no `runner` context: steps run as sandboxed plugins",
    ),
    ("strategy", "there is no `strategy` context"),
];

/// One step of a path written in the expression: a key known before the run, `*`, or an
/// index computed at run time.
enum Seg<'n> {
    Key(Cow<'n, str>),
    Star,
    Dynamic,
}

/// A context access and its path: `steps.build.outputs['url']` is `steps` and three keys.
struct Path<'n> {
    root: &'n str,
    segs: Vec<Seg<'n>>,
}

impl Path<'_> {
    fn key(&self, i: usize) -> Option<&str> {
        match self.segs.get(i) {
            Some(Seg::Key(k)) => Some(k),
            _ => None,
        }
    }

    fn text(&self) -> String {
        let mut s = self.root.to_string();
        for seg in &self.segs {
            match seg {
                Seg::Key(k) if is_plain_name(k) => s.push_str(&format!(".{k}")),
                Seg::Key(k) => s.push_str(&format!("['{}']", k.replace('\'', "''"))),
                Seg::Star => s.push_str(".*"),
                Seg::Dynamic => s.push_str("[…]"),
            }
        }
        s
    }
}

/// The path `node` reads, when it is a context access.
fn path_of(node: &Node) -> Option<Path<'_>> {
    let mut indices = Vec::new();
    let mut base = node;
    while let Node::Index(obj, index) = base {
        indices.push(&**index);
        base = obj;
    }
    let Node::Ctx(root) = base else {
        return None;
    };
    let segs = indices
        .into_iter()
        .rev()
        .map(|index| match index {
            Index::Star => Seg::Star,
            Index::Expr(Node::Str(k)) => Seg::Key(Cow::Borrowed(k)),
            Index::Expr(Node::Num(n)) => Seg::Key(Cow::Owned(number_to_string(*n))),
            Index::Expr(Node::Bool(b)) => Seg::Key(Cow::Owned(b.to_string())),
            Index::Expr(Node::Null) => Seg::Key(Cow::Borrowed("")),
            Index::Expr(_) => Seg::Dynamic,
        })
        .collect();
    Some(Path { root, segs })
}

/// Every context access in `node`, outermost first.
fn paths<'n>(node: &'n Node, out: &mut Vec<Path<'n>>) {
    match node {
        Node::Index(..) | Node::Ctx(_) => {
            let mut base = node;
            while let Node::Index(obj, index) = base {
                if let Index::Expr(e) = &**index {
                    paths(e, out);
                }
                base = obj;
            }
            match path_of(node) {
                Some(p) => out.push(p),
                None => paths(base, out),
            }
        }
        Node::Not(e) => paths(e, out),
        Node::Logic(_, args) | Node::Call(_, args) => args.iter().for_each(|a| paths(a, out)),
        Node::Cmp(_, a, b) => {
            paths(a, out);
            paths(b, out);
        }
        Node::Null | Node::Bool(_) | Node::Num(_) | Node::Str(_) => {}
    }
}

/// Problems with the names `expr` refers to, and with what it compares them to, as messages.
pub(crate) fn check_refs(expr: &Expr, rules: &RefRules) -> Vec<String> {
    let mut found = Vec::new();
    paths(&expr.node, &mut found);
    let mut problems: Vec<String> = found
        .iter()
        .filter_map(|p| check_path(p, rules).err())
        .collect();
    status_literals(&expr.node, &mut problems);
    problems.dedup();
    problems
}

/// `name` as declared among `names`, matched without regard to case.
fn declared<'a>(name: &str, names: &[&'a str]) -> Option<&'a str> {
    names.iter().copied().find(|n| same_name(n, name))
}

fn check_path(p: &Path, rules: &RefRules) -> Result<(), String> {
    let only_inputs = "here only `inputs` and `run.id` may be used";
    match p.root.to_ascii_lowercase().as_str() {
        "inputs" => {
            if let Some(name) = p.key(0)
                && declared(name, rules.inputs).is_none()
            {
                return Err(format!(
                    "unknown input `{name}`{}",
                    crate::did_you_mean(name, rules.inputs.iter().copied())
                ));
            }
        }
        "env" => {
            let Some(env) = rules.env else {
                return Err(format!("`{}` is not available; {only_inputs}", p.text()));
            };
            if let Some(name) = p.key(0)
                && declared(name, env).is_none()
            {
                return Err(format!(
                    "unknown env `{name}`{}",
                    crate::did_you_mean(name, env.iter().copied())
                ));
            }
        }
        "run" => match p.key(0) {
            None => {}
            Some(k) if same_name(k, "id") => {}
            Some(k) if same_name(k, "dry_run") && rules.steps.is_some() => {}
            Some(k) if same_name(k, "dry_run") => {
                return Err(format!(
                    "`run.dry_run` is not available here; {only_inputs}"
                ));
            }
            Some(_) => {
                return Err(format!(
                    "unknown name `{}`; expected `run.id` or `run.dry_run`",
                    p.text()
                ));
            }
        },
        "steps" => {
            let Some((all, upstream)) = rules.steps else {
                return Err(format!("`{}` is not available; {only_inputs}", p.text()));
            };
            let Some(written) = p.key(0) else {
                // `steps.*` or a computed id: which steps it reads is known only at run time.
                return Ok(());
            };
            let Some(id) = declared(written, all) else {
                return Err(format!(
                    "unknown step `{written}`{}",
                    crate::did_you_mean(written, all.iter().copied())
                ));
            };
            if declared(id, upstream).is_none() {
                return Err(format!(
                    "step `{id}` is not upstream of this step, so its results may not exist yet; add it to `needs`"
                ));
            }
            let wrong = || {
                Err(format!(
                    "unknown name `{}`; expected `steps.{id}.outputs.<key>` or `steps.{id}.status`",
                    p.text()
                ))
            };
            match (p.segs.get(1), p.segs.len()) {
                (None | Some(Seg::Star | Seg::Dynamic), _) => {}
                (Some(Seg::Key(k)), _) if same_name(k, "outputs") => {}
                (Some(Seg::Key(k)), 2) if same_name(k, "status") => {}
                (Some(Seg::Key(k)), _) if same_name(k, "outcome") || same_name(k, "conclusion") => {
                    return Err(format!(
                        "`{}`: GitHub's `{k}` is `steps.{id}.status` here, and says 'succeeded', 'failed', 'skipped' or 'cancelled'",
                        p.text()
                    ));
                }
                _ => return wrong(),
            }
        }
        root => {
            if let Some((_, instead)) = GITHUB_ONLY.iter().find(|(name, _)| *name == root) {
                return Err(format!(
                    "`{}` is a GitHub Actions context shiphat does not have: {instead}",
                    p.root
                ));
            }
            return Err(format!(
                "unknown name `{}`{}",
                p.root,
                crate::suggest(root, ROOTS.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| "; expected `inputs`, `env`, `steps` or `run`".into())
            ));
        }
    }
    Ok(())
}

/// Whether `path` is `steps.<id>.status`.
fn is_status_path(path: &Path) -> bool {
    same_name(path.root, "steps")
        && path.segs.len() == 2
        && path.key(0).is_some()
        && path.key(1).is_some_and(|k| same_name(k, "status"))
}

/// Comparisons of `steps.<id>.status` with a string it never equals, such as GitHub Actions'
/// `'success'`: the condition would be silently false (or true) on every run.
fn status_literals(node: &Node, problems: &mut Vec<String>) {
    match node {
        Node::Cmp(_, a, b) => {
            for (path, literal) in [(a, b), (b, a)] {
                let (Some(path), Node::Str(text)) = (path_of(path), &**literal) else {
                    continue;
                };
                if is_status_path(&path) && !STEP_STATUSES.iter().any(|s| same_name(s, text)) {
                    let hint = crate::suggest(&text.to_lowercase(), STEP_STATUSES.iter().copied())
                        .map(|s| format!("; did you mean '{s}'?"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "`{}` is never '{text}': a step's status is 'succeeded', 'failed', 'skipped' or 'cancelled'{hint}",
                        path.text()
                    ));
                }
            }
            status_literals(a, problems);
            status_literals(b, problems);
        }
        Node::Not(e) => status_literals(e, problems),
        Node::Logic(_, args) | Node::Call(_, args) => {
            args.iter().for_each(|a| status_literals(a, problems));
        }
        Node::Index(obj, index) => {
            status_literals(obj, problems);
            if let Index::Expr(e) = &**index {
                status_literals(e, problems);
            }
        }
        Node::Null | Node::Bool(_) | Node::Num(_) | Node::Str(_) | Node::Ctx(_) => {}
    }
}

/// What `validate` knows about a value before the run.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TypeOf {
    /// Its kind, when it is known.
    pub kind: Option<Kind>,
    /// Whether it may be missing (null).
    pub maybe_null: bool,
}

/// What [`meaning_changes`] needs to know about the workflow.
pub(crate) struct Changes<'a> {
    /// Each input by name, with what is known of its value.
    pub inputs: &'a [(&'a str, TypeOf)],
    /// Whether the expression gives a value (in `with`, `env`, …) rather than an `if:`.
    pub is_value: bool,
}

fn known(kind: Kind) -> TypeOf {
    TypeOf {
        kind: Some(kind),
        maybe_null: kind == Kind::Null,
    }
}

fn type_of(node: &Node, cx: &Changes) -> TypeOf {
    const UNKNOWN: TypeOf = TypeOf {
        kind: None,
        maybe_null: false,
    };
    match node {
        Node::Null => known(Kind::Null),
        Node::Bool(_) | Node::Not(_) | Node::Cmp(..) => known(Kind::Bool),
        Node::Num(_) => known(Kind::Number),
        Node::Str(_) => known(Kind::String),
        Node::Call(f, _) => match f {
            Func::Format | Func::Join | Func::ToJson => known(Kind::String),
            Func::FromJson | Func::Case => UNKNOWN,
            _ => known(Kind::Bool),
        },
        Node::Logic(..) => UNKNOWN,
        Node::Ctx(_) | Node::Index(..) => {
            let Some(path) = path_of(node) else {
                return UNKNOWN;
            };
            match (path.root.to_ascii_lowercase().as_str(), path.segs.len()) {
                ("inputs", 1) => path
                    .key(0)
                    .and_then(|name| cx.inputs.iter().find(|(n, _)| same_name(n, name)))
                    .map_or(UNKNOWN, |(_, t)| *t),
                ("run", 1) if path.key(0).is_some_and(|k| same_name(k, "id")) => {
                    known(Kind::String)
                }
                ("run", 1) if path.key(0).is_some_and(|k| same_name(k, "dry_run")) => {
                    known(Kind::Bool)
                }
                ("steps", _) if is_status_path(&path) => known(Kind::String),
                ("steps", n) if n >= 3 => TypeOf {
                    kind: None,
                    maybe_null: true,
                },
                _ => UNKNOWN,
            }
        }
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Null => "null",
        Kind::Bool => "a boolean",
        Kind::Number => "a number",
        Kind::String => "a string",
        Kind::Array => "an array",
        Kind::Object => "an object",
    }
}

/// Where `expr` means something else under GitHub's rules than under shiphat's rules before
/// them, as messages for `validate` to show once.
pub(crate) fn meaning_changes(expr: &Expr, cx: &Changes) -> Vec<String> {
    let mut notes = Vec::new();
    if cx.is_value && matches!(expr.node, Node::Logic(..)) {
        notes.push(format!(
            "`{}` now gives one of its operands, as GitHub's `&&` and `||` do (`inputs.version || 'latest'` is the version, or 'latest'), not `true` or `false`",
            expr.source
        ));
    }
    comparisons(&expr.node, cx, &mut notes);
    if expr.backslash {
        notes.push(format!(
            "`{}`: a backslash in a string is now kept as written, as in GitHub ('C:\\temp' is C:\\temp); a quote inside a string is written ''",
            expr.source
        ));
    }
    notes.dedup();
    notes
}

fn comparisons(node: &Node, cx: &Changes, notes: &mut Vec<String>) {
    match node {
        Node::Cmp(op, a, b) => {
            let (ta, tb) = (type_of(a, cx), type_of(b, cx));
            let text = source_of(node);
            let equality = matches!(op, Cmp::Eq | Cmp::Ne);
            if let (Some(ka), Some(kb)) = (ta.kind, tb.kind)
                && ka != kb
            {
                let before = if equality {
                    "before, they were never equal"
                } else {
                    "before, the comparison failed the run"
                };
                notes.push(format!(
                    "`{text}` compares {} with {}: under GitHub's rules, which shiphat now follows, both become numbers first (`'2' == 2`, `'' == false` and `null == 0` are true); {before}",
                    kind_name(ka),
                    kind_name(kb)
                ));
            } else if equality {
                for (side, other) in [(ta, b), (tb, a)] {
                    let empty = matches!(&**other, Node::Str(s) if s.is_empty());
                    if side.maybe_null && side.kind.is_none_or(|k| k == Kind::String) && empty {
                        notes.push(format!(
                            "`{text}` is now {} when the value is missing: under GitHub's rules `null == ''` is true",
                            if *op == Cmp::Eq { "true" } else { "false" }
                        ));
                    }
                }
            }
            comparisons(a, cx, notes);
            comparisons(b, cx, notes);
        }
        Node::Not(e) => comparisons(e, cx, notes),
        Node::Logic(_, args) | Node::Call(_, args) => {
            args.iter().for_each(|a| comparisons(a, cx, notes));
        }
        Node::Index(obj, index) => {
            comparisons(obj, cx, notes);
            if let Index::Expr(e) = &**index {
                comparisons(e, cx, notes);
            }
        }
        Node::Null | Node::Bool(_) | Node::Num(_) | Node::Str(_) | Node::Ctx(_) => {}
    }
}
