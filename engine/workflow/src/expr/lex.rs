//! Tokens, by GitHub Actions' rules: strings in single quotes with `''` for a quote and no
//! backslash escapes; numbers as JavaScript reads them (`.5`, `+1`, `0xff`, `0o7`, `1e2`,
//! `NaN`, `Infinity`); names of letters, digits, `_` and `-`.

use super::value::js_number;

/// The longest expression GitHub accepts, in characters. It also bounds the work of lexing
/// and parsing one.
pub const MAX_EXPR_LENGTH: usize = 21_000;

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Tok {
    LParen,
    RParen,
    LBrack,
    RBrack,
    Comma,
    Dot,
    Not,
    Ne,
    Eq,
    Gt,
    Ge,
    Lt,
    Le,
    And,
    Or,
    Star,
    Num(f64),
    Str(String),
    Ident(String),
    True,
    False,
    Null,
}

#[derive(Clone, Debug)]
pub(super) struct Token {
    pub tok: Tok,
    /// The token as written.
    pub text: String,
    /// Where it starts, counting characters from 1.
    pub at: usize,
}

/// What [`lex`] found besides the tokens, for `validate`'s notes on changed meaning.
#[derive(Default)]
pub(super) struct Notes {
    /// A string literal holds a backslash, which GitHub keeps as written.
    pub backslash: bool,
}

/// Characters that end a number or a name.
fn is_boundary(c: char) -> bool {
    matches!(
        c,
        '(' | '[' | ')' | ']' | ',' | '.' | '!' | '>' | '<' | '=' | '&' | '|'
    ) || c.is_whitespace()
}

pub(super) fn lex(src: &str, notes: &mut Notes) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = src.chars().collect();
    if chars.len() > MAX_EXPR_LENGTH {
        let start: String = src.trim().chars().take(40).collect();
        return Err(format!(
            "the expression starting `{start}` is {} characters long, over GitHub's limit of {MAX_EXPR_LENGTH}",
            chars.len()
        ));
    }
    let mut out: Vec<Token> = Vec::new();
    let mut i = 0;
    let unexpected =
        |text: &str, at: usize| format!("unexpected `{text}` at position {at} in `{src}`");
    while i < chars.len() {
        let start = i;
        let c = chars[i];
        i += 1;
        let next = chars.get(i).copied();
        let prev = out.last().map(|t| &t.tok);
        let simple = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBrack),
            ']' => Some(Tok::RBrack),
            ',' => Some(Tok::Comma),
            '*' => Some(Tok::Star),
            '.' if matches!(
                prev,
                Some(Tok::Ident(_) | Tok::RBrack | Tok::RParen | Tok::Star)
            ) =>
            {
                Some(Tok::Dot)
            }
            '!' if next == Some('=') => {
                i += 1;
                Some(Tok::Ne)
            }
            '!' => Some(Tok::Not),
            '=' if next == Some('=') => {
                i += 1;
                Some(Tok::Eq)
            }
            '<' if next == Some('=') => {
                i += 1;
                Some(Tok::Le)
            }
            '<' => Some(Tok::Lt),
            '>' if next == Some('=') => {
                i += 1;
                Some(Tok::Ge)
            }
            '>' => Some(Tok::Gt),
            '&' if next == Some('&') => {
                i += 1;
                Some(Tok::And)
            }
            '|' if next == Some('|') => {
                i += 1;
                Some(Tok::Or)
            }
            _ => None,
        };
        if let Some(tok) = simple {
            out.push(Token {
                tok,
                text: chars[start..i].iter().collect(),
                at: start + 1,
            });
            continue;
        }
        match c {
            ' ' | '\t' | '\r' | '\n' => {}
            '\'' => {
                let mut s = String::new();
                loop {
                    match chars.get(i) {
                        None => {
                            let text: String = chars[start..].iter().collect();
                            return Err(format!(
                                "unterminated string `{text}` at position {} in `{src}`; end it with `'` (a quote inside a string is written `''`)",
                                start + 1
                            ));
                        }
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&other) => {
                            notes.backslash |= other == '\\';
                            s.push(other);
                            i += 1;
                        }
                    }
                }
                out.push(Token {
                    tok: Tok::Str(s),
                    text: chars[start..i].iter().collect(),
                    at: start + 1,
                });
            }
            '"' => {
                return Err(format!(
                    "strings are written in single quotes, as in GitHub Actions: `'text'` (a quote inside is doubled: `'it''s'`), not `\"` (at position {} in `{src}`)",
                    start + 1
                ));
            }
            c if c.is_ascii_digit() || matches!(c, '.' | '-' | '+') => {
                while i < chars.len() && (!is_boundary(chars[i]) || chars[i] == '.') {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let n = js_number(&text);
                if n.is_nan() || text.trim().is_empty() {
                    return Err(unexpected(&text, start + 1));
                }
                out.push(Token {
                    tok: Tok::Num(n),
                    text,
                    at: start + 1,
                });
            }
            _ => {
                while i < chars.len() && !is_boundary(chars[i]) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                let after_dot = prev == Some(&Tok::Dot);
                let tok = match text.as_str() {
                    "true" if !after_dot => Tok::True,
                    "false" if !after_dot => Tok::False,
                    "null" if !after_dot => Tok::Null,
                    "NaN" if !after_dot => Tok::Num(f64::NAN),
                    "Infinity" if !after_dot => Tok::Num(f64::INFINITY),
                    _ if super::is_plain_name(&text) => Tok::Ident(text.clone()),
                    _ if text.starts_with('=') => {
                        return Err(format!(
                            "{}; use `==` to compare",
                            unexpected(&text, start + 1)
                        ));
                    }
                    _ if text.starts_with(['&', '|']) => {
                        return Err(format!(
                            "{}; use `&&` or `||`",
                            unexpected(&text, start + 1)
                        ));
                    }
                    _ => return Err(unexpected(&text, start + 1)),
                };
                out.push(Token {
                    tok,
                    text,
                    at: start + 1,
                });
            }
        }
    }
    Ok(out)
}
