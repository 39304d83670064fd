//! The grammar, GitHub Actions' precedence and nesting limit: `||` below `&&` below `==` and
//! `!=` below `<`, `<=`, `>` and `>=` below `!`, then property access (`.name`, `[expr]`, `.*`,
//! `[*]`) after a name, a call or a parenthesised group.

use super::lex::{Tok, Token};

/// The deepest an expression may nest: GitHub's limit. Each group, call argument, `!`,
/// `&&`/`||` chain and property access is a level, as in GitHub; so is each comparison after
/// the first of a chain (`a == b == c`), which GitHub does not count, so that no expression
/// can nest deep enough to overflow the stack of the thread that parses, evaluates or drops it.
pub const MAX_EXPR_DEPTH: usize = 50;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Logic {
    And,
    Or,
}

/// The functions, all pure: none reads a file, the network or the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Format,
    Join,
    ToJson,
    FromJson,
    Case,
    Success,
    Failure,
    Always,
    Cancelled,
}

impl Func {
    const ALL: [(Func, &'static str); 12] = [
        (Func::Contains, "contains"),
        (Func::StartsWith, "startsWith"),
        (Func::EndsWith, "endsWith"),
        (Func::Format, "format"),
        (Func::Join, "join"),
        (Func::ToJson, "toJSON"),
        (Func::FromJson, "fromJSON"),
        (Func::Case, "case"),
        (Func::Success, "success"),
        (Func::Failure, "failure"),
        (Func::Always, "always"),
        (Func::Cancelled, "cancelled"),
    ];

    /// The function called `name`, without regard to case as in GitHub.
    fn named(name: &str) -> Option<Func> {
        Func::ALL
            .iter()
            .find(|(_, n)| n.eq_ignore_ascii_case(name))
            .map(|(f, _)| *f)
    }

    pub(crate) fn name(self) -> &'static str {
        Func::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("", |(_, n)| n)
    }

    /// The fewest and most arguments it takes.
    fn arity(self) -> (usize, usize) {
        match self {
            Func::Contains | Func::StartsWith | Func::EndsWith => (2, 2),
            // GitHub's most: 255 arguments in all.
            Func::Format => (1, 255),
            Func::Join => (1, 2),
            Func::ToJson | Func::FromJson => (1, 1),
            Func::Case => (3, 255),
            Func::Success | Func::Failure | Func::Always | Func::Cancelled => (0, 0),
        }
    }

    /// Whether it asks how the run is going, which only `if:` can answer.
    pub(crate) fn is_status(self) -> bool {
        matches!(
            self,
            Func::Success | Func::Failure | Func::Always | Func::Cancelled
        )
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Index {
    Star,
    Expr(Node),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Node {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// A context by name, as written: `inputs`, `env`, `steps`, `run`.
    Ctx(String),
    /// `x.name`, `x['name']`, `x[i]`, `x.*`, `x[*]`.
    Index(Box<Node>, Box<Index>),
    Not(Box<Node>),
    /// A chain of `&&` or of `||`, evaluated left to right, giving the operand it stopped at.
    Logic(Logic, Vec<Node>),
    Cmp(Cmp, Box<Node>, Box<Node>),
    Call(Func, Vec<Node>),
}

/// A rule of the grammar: what parses an operand of an operator.
type Operand<'a> = fn(&mut Parser<'a>) -> Result<Node, String>;

pub(super) struct Parser<'a> {
    toks: Vec<Token>,
    pos: usize,
    src: &'a str,
    depth: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(toks: Vec<Token>, src: &'a str) -> Self {
        Parser {
            toks,
            pos: 0,
            src,
            depth: 0,
        }
    }

    /// The whole expression; an empty one is `null`, as in GitHub.
    pub(super) fn parse(mut self) -> Result<Node, String> {
        if self.toks.is_empty() {
            return Ok(Node::Null);
        }
        let node = self.expression()?;
        if let Some(t) = self.peek_token() {
            return Err(self.unexpected(t));
        }
        Ok(node)
    }

    fn deeper(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_EXPR_DEPTH {
            // The source can be long: its start is enough to find it.
            let start: String = self.src.trim().chars().take(40).collect();
            return Err(format!(
                "the expression starting `{start}` nests deeper than {MAX_EXPR_DEPTH} levels (GitHub's limit); split it into smaller conditions"
            ));
        }
        Ok(())
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }

    fn peek_token(&self) -> Option<&Token> {
        self.toks.get(self.pos)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn unexpected(&self, t: &Token) -> String {
        format!(
            "unexpected `{}` at position {} in `{}`",
            t.text, t.at, self.src
        )
    }

    fn end(&self) -> String {
        format!("unexpected end of expression `{}`", self.src)
    }

    fn expect(&mut self, tok: &Tok) -> Result<(), String> {
        if self.eat(tok) {
            return Ok(());
        }
        Err(match self.peek_token() {
            Some(t) => self.unexpected(t),
            None => self.end(),
        })
    }

    fn expression(&mut self) -> Result<Node, String> {
        self.deeper()?;
        let node = self.logic(Logic::Or)?;
        self.depth -= 1;
        Ok(node)
    }

    fn logic(&mut self, op: Logic) -> Result<Node, String> {
        let (tok, operand): (Tok, Operand<'a>) = match op {
            Logic::Or => (Tok::Or, |p| p.logic(Logic::And)),
            Logic::And => (Tok::And, Self::equality),
        };
        let first = operand(self)?;
        if self.peek() != Some(&tok) {
            return Ok(first);
        }
        self.deeper()?;
        let mut args = vec![first];
        while self.eat(&tok) {
            args.push(operand(self)?);
        }
        self.depth -= 1;
        Ok(Node::Logic(op, args))
    }

    /// A left-to-right chain of the operators `ops` over operands `operand` parses.
    fn chain(&mut self, ops: &[(Tok, Cmp)], operand: Operand<'a>) -> Result<Node, String> {
        let depth = self.depth;
        let mut lhs = operand(self)?;
        let mut count = 0;
        while let Some(&(_, op)) = ops.iter().find(|(t, _)| self.peek() == Some(t)) {
            self.pos += 1;
            count += 1;
            if count > 1 {
                self.deeper()?;
            }
            let rhs = operand(self)?;
            lhs = Node::Cmp(op, Box::new(lhs), Box::new(rhs));
        }
        self.depth = depth;
        Ok(lhs)
    }

    fn equality(&mut self) -> Result<Node, String> {
        self.chain(&[(Tok::Eq, Cmp::Eq), (Tok::Ne, Cmp::Ne)], Self::comparison)
    }

    fn comparison(&mut self) -> Result<Node, String> {
        self.chain(
            &[
                (Tok::Gt, Cmp::Gt),
                (Tok::Ge, Cmp::Ge),
                (Tok::Lt, Cmp::Lt),
                (Tok::Le, Cmp::Le),
            ],
            Self::unary,
        )
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.eat(&Tok::Not) {
            self.deeper()?;
            let inner = self.unary()?;
            self.depth -= 1;
            return Ok(Node::Not(Box::new(inner)));
        }
        self.index()
    }

    fn index(&mut self) -> Result<Node, String> {
        let (mut node, indexable) = self.call()?;
        if !indexable {
            return Ok(node);
        }
        let depth = self.depth;
        loop {
            if self.eat(&Tok::LBrack) {
                let index = if self.eat(&Tok::Star) {
                    Index::Star
                } else {
                    Index::Expr(self.expression()?)
                };
                self.expect(&Tok::RBrack)?;
                self.deeper()?;
                node = Node::Index(Box::new(node), Box::new(index));
            } else if self.eat(&Tok::Dot) {
                self.deeper()?;
                let index = match self.peek_token().map(|t| t.tok.clone()) {
                    Some(Tok::Ident(name)) => Index::Expr(Node::Str(name)),
                    Some(Tok::Star) => Index::Star,
                    Some(_) => return Err(self.unexpected(&self.toks[self.pos])),
                    None => return Err(self.end()),
                };
                self.pos += 1;
                node = Node::Index(Box::new(node), Box::new(index));
            } else {
                break;
            }
        }
        self.depth = depth;
        Ok(node)
    }

    /// A call, a context name or a primary, and whether property access may follow it:
    /// only a name, a call or a parenthesised group may be indexed, as in GitHub.
    fn call(&mut self) -> Result<(Node, bool), String> {
        let Some(Tok::Ident(name)) = self.peek().cloned() else {
            return self.primary();
        };
        let at = self.toks[self.pos].at;
        self.pos += 1;
        if !self.eat(&Tok::LParen) {
            return Ok((Node::Ctx(name), true));
        }
        let mut args = Vec::new();
        while !self.eat(&Tok::RParen) {
            if self.peek().is_none() {
                return Err(self.end());
            }
            args.push(self.expression()?);
            if self.peek() != Some(&Tok::RParen) {
                self.expect(&Tok::Comma)?;
            }
        }
        let func = Func::named(&name).ok_or_else(|| unknown_function(&name, at, self.src))?;
        let (least, most) = func.arity();
        if args.len() < least || args.len() > most {
            let wants = match (least, most) {
                (l, m) if l == m => format!("{l}"),
                (l, 255) => format!("at least {l}"),
                (l, m) => format!("{l} or {m}"),
            };
            return Err(format!(
                "`{}()` takes {wants} argument{}, not {} (at position {at} in `{}`)",
                func.name(),
                if wants == "1" { "" } else { "s" },
                args.len(),
                self.src
            ));
        }
        if func == Func::Case && args.len() % 2 == 0 {
            return Err(format!(
                "`case()` takes pairs of a condition and a value, then a default: an odd number of arguments, not {} (at position {at} in `{}`)",
                args.len(),
                self.src
            ));
        }
        Ok((Node::Call(func, args), true))
    }

    fn primary(&mut self) -> Result<(Node, bool), String> {
        let Some(t) = self.peek_token().cloned() else {
            return Err(self.end());
        };
        self.pos += 1;
        Ok(match t.tok {
            Tok::Null => (Node::Null, false),
            Tok::True => (Node::Bool(true), false),
            Tok::False => (Node::Bool(false), false),
            Tok::Num(n) => (Node::Num(n), false),
            Tok::Str(s) => (Node::Str(s), false),
            Tok::LParen => {
                let inner = self.expression()?;
                self.expect(&Tok::RParen)?;
                (inner, true)
            }
            _ => return Err(self.unexpected(&t)),
        })
    }
}

fn unknown_function(name: &str, at: usize, src: &str) -> String {
    if name.eq_ignore_ascii_case("hashFiles") {
        return format!(
            "`hashFiles()` reads files, and nothing in a shiphat expression can reach files, the network or the clock (at position {at} in `{src}`)"
        );
    }
    let names: Vec<&str> = Func::ALL.iter().map(|(_, n)| *n).collect();
    let hint = crate::suggest(name, names.iter().copied())
        .map(|s| format!("did you mean `{s}()`? "))
        .unwrap_or_default();
    format!(
        "unknown function `{name}()` at position {at} in `{src}`; {hint}expressions have {}, and in `if:` {}",
        names[..8]
            .iter()
            .map(|n| format!("`{n}()`"))
            .collect::<Vec<_>>()
            .join(", "),
        names[8..]
            .iter()
            .map(|n| format!("`{n}()`"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}
