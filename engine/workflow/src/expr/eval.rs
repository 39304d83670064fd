//! Evaluation: GitHub Actions' meaning for every node, and its functions.

use std::borrow::Cow;
use std::cell::Cell;
use std::rc::Rc;

use serde_json::{Value, json};

use super::parse::{Cmp, Func, Index, Logic, Node};
use super::value::{Kind, Val, equals, fold, order, owned};
use super::{EvalError, Scope, Status};

/// The most bytes one evaluation may build (strings from `format`, `join`, `toJSON`, values
/// from `fromJSON`, the arrays `*` makes): GitHub's limit. Without it, a few nested
/// `format('{0}{0}…', …)` calls double their size at every level, and one line of a workflow
/// could take all the engine's memory. Values read from the run are borrowed and cost nothing.
pub const MAX_EXPR_MEMORY: usize = 1024 * 1024;

pub(super) struct Ev<'e, 's> {
    scope: &'e Scope<'s>,
    status: Option<Status>,
    used: Cell<usize>,
}

fn fail<T>(message: String) -> Result<T, EvalError> {
    Err(EvalError(message))
}

impl<'e, 's> Ev<'e, 's> {
    pub(super) fn new(scope: &'e Scope<'s>, status: Option<Status>) -> Self {
        Ev {
            scope,
            status,
            used: Cell::new(0),
        }
    }

    /// Counts `bytes` against [`MAX_EXPR_MEMORY`].
    fn charge(&self, bytes: usize) -> Result<(), EvalError> {
        let used = self.used.get().saturating_add(bytes);
        self.used.set(used);
        if used > MAX_EXPR_MEMORY {
            return fail(format!(
                "the expression builds more than {} KiB of values (GitHub's limit); build less text with `format`, `join` or `toJSON`",
                MAX_EXPR_MEMORY / 1024
            ));
        }
        Ok(())
    }

    fn text(&self, s: String) -> Result<Val<'s>, EvalError> {
        self.charge(s.len())?;
        Ok(Val::Str(Cow::Owned(s)))
    }

    pub(super) fn eval(&self, node: &Node) -> Result<Val<'s>, EvalError> {
        Ok(match node {
            Node::Null => Val::Null,
            Node::Bool(b) => Val::Bool(*b),
            Node::Num(n) => Val::Num(*n),
            Node::Str(s) => Val::Str(Cow::Owned(s.clone())),
            Node::Ctx(name) => self.context(name)?,
            Node::Index(obj, index) => {
                // GitHub evaluates the index before what it indexes.
                let index = match &**index {
                    Index::Star => None,
                    Index::Expr(e) => Some(self.eval(e)?),
                };
                let obj = self.eval(obj)?;
                self.access(&obj, index.as_ref())?
            }
            Node::Not(e) => Val::Bool(!self.eval(e)?.truthy()),
            Node::Logic(op, args) => {
                let mut last = Val::Null;
                for arg in args {
                    last = self.eval(arg)?;
                    let stop = match op {
                        Logic::And => !last.truthy(),
                        Logic::Or => last.truthy(),
                    };
                    if stop {
                        break;
                    }
                }
                last
            }
            Node::Cmp(op, a, b) => {
                let (a, b) = (self.eval(a)?, self.eval(b)?);
                Val::Bool(match op {
                    Cmp::Eq => equals(&a, &b),
                    Cmp::Ne => !equals(&a, &b),
                    Cmp::Lt => order(&a, &b).is_some_and(|o| o.is_lt()),
                    Cmp::Le => equals(&a, &b) || order(&a, &b).is_some_and(|o| o.is_lt()),
                    Cmp::Gt => order(&a, &b).is_some_and(|o| o.is_gt()),
                    Cmp::Ge => equals(&a, &b) || order(&a, &b).is_some_and(|o| o.is_gt()),
                })
            }
            Node::Call(func, args) => self.call(*func, args)?,
        })
    }

    fn context(&self, name: &str) -> Result<Val<'s>, EvalError> {
        let scope = self.scope;
        Ok(match name.to_ascii_lowercase().as_str() {
            "inputs" => Val::Map(scope.inputs),
            "env" => Val::Map(scope.env),
            "steps" => Val::Steps(scope.steps),
            "run" => Val::Own(Rc::new(json!({
                "id": scope.run_id,
                "dry_run": scope.dry_run,
            }))),
            _ => return fail(format!("unknown name `{name}`")),
        })
    }

    /// `obj[index]`, or `obj[*]` when `index` is `None`, by GitHub's rules: the index is
    /// matched as text against an object's keys and as a whole number against an array's
    /// positions; what is not there is null, and a `*` over a filtered array maps over it.
    fn access(&self, obj: &Val<'s>, index: Option<&Val<'s>>) -> Result<Val<'s>, EvalError> {
        let key = index.filter(|i| i.is_primitive()).map(Val::coerce_string);
        let position = index.map(Val::number).and_then(|n| {
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a finite, non-negative, floored number; one past usize is out of range anyway"
            )]
            (n.is_finite() && n >= 0.0).then(|| n.floor() as usize)
        });
        let pick = |item: &Val<'s>| -> Option<Val<'s>> {
            match item.kind() {
                Kind::Object => key.as_deref().and_then(|k| item.get(k)),
                Kind::Array => position.and_then(|i| item.item(i)),
                _ => None,
            }
        };
        if obj.is_filtered() {
            let mut out = Vec::new();
            for item in obj.children() {
                match index {
                    None if matches!(item.kind(), Kind::Object | Kind::Array) => {
                        out.extend(item.children());
                    }
                    None => {}
                    Some(_) => out.extend(pick(&item)),
                }
            }
            return self.list(out);
        }
        Ok(match (obj.kind(), index) {
            (Kind::Object | Kind::Array, None) => self.list(obj.children())?,
            (_, None) => self.list(Vec::new())?,
            _ => pick(obj).unwrap_or(Val::Null),
        })
    }

    fn list(&self, items: Vec<Val<'s>>) -> Result<Val<'s>, EvalError> {
        self.charge(items.len() * std::mem::size_of::<Val>())?;
        Ok(Val::List(Rc::new(items)))
    }

    fn call(&self, func: Func, args: &[Node]) -> Result<Val<'s>, EvalError> {
        if func.is_status() {
            let Some(status) = self.status else {
                return fail(format!(
                    "`{}()` tells how the run is going, which only `if:` can ask",
                    func.name()
                ));
            };
            return Ok(Val::Bool(match func {
                Func::Success => status.success,
                Func::Failure => status.failure,
                Func::Cancelled => status.cancelled,
                _ => true,
            }));
        }
        let values = args
            .iter()
            .map(|a| self.eval(a))
            .collect::<Result<Vec<_>, _>>()?;
        match func {
            Func::Contains => {
                let (hay, needle) = (&values[0], &values[1]);
                let found = if hay.is_primitive() {
                    needle.is_primitive() && {
                        let (h, n) = (hay.coerce_string(), needle.coerce_string());
                        self.charge(h.len() + n.len())?;
                        fold(&h).contains(&*fold(&n))
                    }
                } else if hay.kind() == Kind::Array {
                    hay.children().iter().any(|item| equals(needle, item))
                } else {
                    false
                };
                Ok(Val::Bool(found))
            }
            Func::StartsWith | Func::EndsWith => {
                let (a, b) = (&values[0], &values[1]);
                if !a.is_primitive() || !b.is_primitive() {
                    return Ok(Val::Bool(false));
                }
                let (a, b) = (a.coerce_string(), b.coerce_string());
                self.charge(a.len() + b.len())?;
                let (a, b) = (fold(&a), fold(&b));
                Ok(Val::Bool(if func == Func::StartsWith {
                    a.starts_with(&*b)
                } else {
                    a.ends_with(&*b)
                }))
            }
            Func::Format => self.format(&values),
            Func::Case => {
                // Every argument is evaluated first, as GitHub does, so an error in a branch
                // not taken still fails.
                for (i, pair) in values[..values.len() - 1].chunks(2).enumerate() {
                    if pair[0].kind() != Kind::Bool {
                        return fail(format!(
                            "`case()` needs `true` or `false` as each condition, and `{}` is {}",
                            source_of(&args[2 * i]),
                            describe(&pair[0])
                        ));
                    }
                    if pair[0].truthy() {
                        return Ok(pair[1].clone());
                    }
                }
                Ok(values[values.len() - 1].clone())
            }
            Func::Join => {
                let list = &values[0];
                if list.is_primitive() {
                    return self.text(list.coerce_string().into_owned());
                }
                if list.kind() != Kind::Array {
                    return Ok(Val::Str(Cow::Borrowed("")));
                }
                let separator = values
                    .get(1)
                    .filter(|s| s.is_primitive())
                    .map_or(Cow::Borrowed(","), Val::coerce_string);
                let mut out = String::new();
                for (i, item) in list.children().iter().enumerate() {
                    if i > 0 {
                        out.push_str(&separator);
                    }
                    out.push_str(&item.coerce_string());
                    if out.len() > MAX_EXPR_MEMORY {
                        self.charge(out.len())?;
                    }
                }
                self.text(out)
            }
            Func::ToJson => {
                let text = serde_json::to_string_pretty(&values[0].to_value())
                    .unwrap_or_else(|_| "null".into());
                self.text(text)
            }
            Func::FromJson => {
                let text = values[0].coerce_string();
                if text.trim().is_empty() {
                    return fail(
                        "`fromJSON()` was given an empty string, which is not JSON".into(),
                    );
                }
                self.charge(text.len())?;
                match serde_json::from_str::<Value>(&text) {
                    Ok(v) => Ok(owned(v)),
                    Err(e) => fail(format!(
                        "`fromJSON()` cannot read its argument as JSON: {e}"
                    )),
                }
            }
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => {
                unreachable!("handled above")
            }
        }
    }

    /// `format('{0} and {1}', a, b)`, with `{{` and `}}` for braces, by GitHub's rules.
    fn format(&self, values: &[Val<'s>]) -> Result<Val<'s>, EvalError> {
        let template = values[0].coerce_string();
        let fs = template.as_ref();
        let invalid = || {
            fail(format!(
                "`format()` string `{fs}` is invalid; write a brace as `{{{{` or `}}}}`"
            ))
        };
        let mut out = String::new();
        let mut index = 0;
        while index < fs.len() {
            let lbrace = fs[index..].find('{').map(|i| i + index);
            let rbrace = fs[index..].find('}').map(|i| i + index);
            match (lbrace, rbrace) {
                (Some(l), r) if r.is_none_or(|r| r > l) => {
                    if fs[l + 1..].starts_with('{') {
                        out.push_str(&fs[index..=l]);
                        index = l + 2;
                        continue;
                    }
                    let Some(r) = r.filter(|&r| r > l + 1) else {
                        return invalid();
                    };
                    let digits: String = fs[l + 1..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    if digits.is_empty() {
                        return invalid();
                    }
                    let arg = digits.parse::<usize>().unwrap_or(usize::MAX);
                    let Some(value) = arg.checked_add(1).and_then(|a| values.get(a)) else {
                        return fail(format!(
                            "`format()` string `{fs}` refers to argument {{{digits}}}, but only {} argument{} follow it",
                            values.len() - 1,
                            if values.len() == 2 { "" } else { "s" }
                        ));
                    };
                    out.push_str(&fs[index..l]);
                    out.push_str(&value.coerce_string());
                    index = r + 1;
                }
                (_, Some(r)) => {
                    if !fs[r + 1..].starts_with('}') {
                        return invalid();
                    }
                    out.push_str(&fs[index..=r]);
                    index = r + 2;
                }
                _ => {
                    out.push_str(&fs[index..]);
                    break;
                }
            }
            if out.len() > MAX_EXPR_MEMORY {
                self.charge(out.len())?;
            }
        }
        self.text(out)
    }
}

/// How a value reads in a message: its JSON, shortened.
fn describe(v: &Val) -> String {
    let text = v.to_value().to_string();
    let short: String = text.chars().take(40).collect();
    if short.len() < text.len() {
        format!("`{short}…`")
    } else {
        format!("`{short}`")
    }
}

/// A node as it might have been written, for messages.
pub(super) fn source_of(node: &Node) -> String {
    match node {
        Node::Null => "null".into(),
        Node::Bool(b) => b.to_string(),
        Node::Num(n) => super::value::number_to_string(*n),
        Node::Str(s) => format!("'{}'", s.replace('\'', "''")),
        Node::Ctx(name) => name.clone(),
        Node::Index(obj, index) => match &**index {
            Index::Star => format!("{}.*", source_of(obj)),
            Index::Expr(Node::Str(k)) if super::is_plain_name(k) => {
                format!("{}.{k}", source_of(obj))
            }
            Index::Expr(e) => format!("{}[{}]", source_of(obj), source_of(e)),
        },
        Node::Not(e) => format!("!{}", source_of(e)),
        Node::Logic(op, args) => args
            .iter()
            .map(source_of)
            .collect::<Vec<_>>()
            .join(if *op == Logic::And { " && " } else { " || " }),
        Node::Cmp(op, a, b) => {
            let op = match op {
                Cmp::Eq => "==",
                Cmp::Ne => "!=",
                Cmp::Lt => "<",
                Cmp::Le => "<=",
                Cmp::Gt => ">",
                Cmp::Ge => ">=",
            };
            format!("{} {op} {}", source_of(a), source_of(b))
        }
        Node::Call(f, args) => format!(
            "{}({})",
            f.name(),
            args.iter().map(source_of).collect::<Vec<_>>().join(", ")
        ),
    }
}
