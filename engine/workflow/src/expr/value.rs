//! Values during evaluation, and GitHub Actions' rules for them: truthiness, the conversions to
//! number and to string, loose equality and ordering, and case-insensitive names.
//!
//! A value read from the run's state is borrowed, not copied: reading a step's outputs costs
//! nothing however large they are, a number keeps its exact JSON form when it is passed on
//! unchanged, and `==` on objects and arrays can compare identity as GitHub does.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::rc::Rc;

use serde_json::{Map, Number, Value};

use super::StepState;

/// The six kinds GitHub's expressions know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// One value while an expression is evaluated. `'s` is the lifetime of the run's state.
#[derive(Clone, Debug)]
pub(crate) enum Val<'s> {
    Null,
    Bool(bool),
    Num(f64),
    Str(Cow<'s, str>),
    /// Any JSON value in the run's state: an input, an env value, an output or part of one.
    Json(&'s Value),
    /// A JSON value made during evaluation, by `fromJSON` or for `run`.
    Own(Rc<Value>),
    /// The array a `*` filter makes.
    List(Rc<Vec<Val<'s>>>),
    /// `inputs`, `env` or a step's `outputs`.
    Map(&'s Map<String, Value>),
    /// The `steps` context.
    Steps(&'s BTreeMap<String, StepState>),
    /// One step in `steps`: `status` and `outputs`.
    Step(&'s StepState),
}

impl<'s> Val<'s> {
    /// The value a JSON value reads as, borrowed.
    fn json(v: &'s Value) -> Val<'s> {
        Val::Json(v)
    }

    /// The JSON value behind this one, when it is a JSON scalar.
    fn scalar(&self) -> Option<&Value> {
        match self {
            Val::Json(v) => Some(v),
            Val::Own(v) => Some(v),
            _ => None,
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Val::Null => Kind::Null,
            Val::Bool(_) => Kind::Bool,
            Val::Num(_) => Kind::Number,
            Val::Str(_) => Kind::String,
            Val::List(_) => Kind::Array,
            Val::Map(_) | Val::Steps(_) | Val::Step(_) => Kind::Object,
            Val::Json(_) | Val::Own(_) => match self.scalar() {
                Some(Value::Null) | None => Kind::Null,
                Some(Value::Bool(_)) => Kind::Bool,
                Some(Value::Number(_)) => Kind::Number,
                Some(Value::String(_)) => Kind::String,
                Some(Value::Array(_)) => Kind::Array,
                Some(Value::Object(_)) => Kind::Object,
            },
        }
    }

    pub(crate) fn is_primitive(&self) -> bool {
        !matches!(self.kind(), Kind::Array | Kind::Object)
    }

    fn as_bool(&self) -> Option<bool> {
        match self {
            Val::Bool(b) => Some(*b),
            _ => self.scalar().and_then(Value::as_bool),
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Val::Str(s) => Some(s),
            _ => self.scalar().and_then(Value::as_str),
        }
    }

    /// GitHub's truthiness: false for null, false, 0, -0, NaN and ''; true for everything
    /// else, including empty objects and arrays.
    pub(crate) fn truthy(&self) -> bool {
        match self.kind() {
            Kind::Null => false,
            Kind::Bool => self.as_bool().unwrap_or(false),
            Kind::Number => {
                let n = self.number();
                n != 0.0 && !n.is_nan()
            }
            Kind::String => self.as_str().is_some_and(|s| !s.is_empty()),
            Kind::Array | Kind::Object => true,
        }
    }

    /// The value as a number, by JavaScript's `Number()`: null is 0, booleans 0 and 1,
    /// strings are parsed (`' 0xff '` is 255, `''` is 0), arrays and objects are NaN.
    pub(crate) fn number(&self) -> f64 {
        match self {
            Val::Num(n) => *n,
            _ => match self.kind() {
                Kind::Null => 0.0,
                Kind::Bool => f64::from(u8::from(self.as_bool().unwrap_or(false))),
                Kind::Number => self.scalar().and_then(Value::as_f64).unwrap_or(f64::NAN),
                Kind::String => js_number(self.as_str().unwrap_or_default()),
                Kind::Array | Kind::Object => f64::NAN,
            },
        }
    }

    /// The value as text, as GitHub converts it: null is '', numbers in their shortest form,
    /// arrays and objects are 'Array' and 'Object'.
    pub(crate) fn coerce_string(&self) -> Cow<'_, str> {
        match self.kind() {
            Kind::Null => Cow::Borrowed(""),
            Kind::Bool => Cow::Borrowed(if self.as_bool().unwrap_or(false) {
                "true"
            } else {
                "false"
            }),
            Kind::Number => match self.scalar().and_then(Value::as_number) {
                // An integer from JSON prints exactly, however large.
                Some(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
                _ => Cow::Owned(number_to_string(self.number())),
            },
            Kind::String => Cow::Borrowed(self.as_str().unwrap_or_default()),
            Kind::Array => Cow::Borrowed("Array"),
            Kind::Object => Cow::Borrowed("Object"),
        }
    }

    /// Where an array or object lives, for `==`: GitHub compares them by identity.
    fn identity(&self) -> usize {
        match self {
            Val::Json(v) => std::ptr::from_ref(*v) as usize,
            Val::Own(v) => Rc::as_ptr(v) as usize,
            Val::List(l) => Rc::as_ptr(l) as usize,
            Val::Map(m) => std::ptr::from_ref(*m) as usize,
            Val::Steps(s) => std::ptr::from_ref(*s) as usize,
            Val::Step(s) => std::ptr::from_ref(*s) as usize,
            Val::Null | Val::Bool(_) | Val::Num(_) | Val::Str(_) => 0,
        }
    }

    /// The property `key` of an object, matched without regard to case as GitHub does (an
    /// exact match wins).
    pub(crate) fn get(&self, key: &str) -> Option<Val<'s>> {
        match self {
            Val::Map(m) => map_get(m, key).map(Val::json),
            Val::Json(Value::Object(m)) => map_get(m, key).map(Val::json),
            Val::Own(v) => match &**v {
                Value::Object(m) => map_get(m, key).map(|v| owned(v.clone())),
                _ => None,
            },
            Val::Steps(steps) => match steps.get(key) {
                Some(step) => Some(Val::Step(step)),
                None => steps
                    .iter()
                    .find(|(id, _)| same_name(id, key))
                    .map(|(_, step)| Val::Step(step)),
            },
            Val::Step(step) => {
                if same_name("status", key) {
                    Some(Val::Str(Cow::Borrowed(&step.status)))
                } else if same_name("outputs", key) {
                    Some(Val::Map(&step.outputs))
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Item `index` of an array.
    pub(crate) fn item(&self, index: usize) -> Option<Val<'s>> {
        match self {
            Val::Json(Value::Array(a)) => a.get(index).map(Val::json),
            Val::Own(v) => match &**v {
                Value::Array(a) => a.get(index).map(|v| owned(v.clone())),
                _ => None,
            },
            Val::List(l) => l.get(index).cloned(),
            _ => None,
        }
    }

    /// The items of an array or the values of an object, in order; nothing for the rest.
    pub(crate) fn children(&self) -> Vec<Val<'s>> {
        match self {
            Val::Json(Value::Array(a)) => a.iter().map(Val::json).collect(),
            Val::Json(Value::Object(m)) => m.values().map(Val::json).collect(),
            Val::Map(m) => m.values().map(Val::json).collect(),
            Val::Own(v) => match &**v {
                Value::Array(a) => a.iter().map(|v| owned(v.clone())).collect(),
                Value::Object(m) => m.values().map(|v| owned(v.clone())).collect(),
                _ => Vec::new(),
            },
            Val::List(l) => l.to_vec(),
            Val::Steps(steps) => steps.values().map(Val::Step).collect(),
            Val::Step(step) => vec![
                Val::Str(Cow::Borrowed(&step.status)),
                Val::Map(&step.outputs),
            ],
            Val::Json(_) | Val::Null | Val::Bool(_) | Val::Num(_) | Val::Str(_) => Vec::new(),
        }
    }

    /// Whether this is the array a `*` filter made, which `.name` and `[i]` map over.
    pub(crate) fn is_filtered(&self) -> bool {
        matches!(self, Val::List(_))
    }

    /// The value as JSON. Numbers that are whole print as integers; NaN and the infinities
    /// have no JSON form and become null, as `JSON.stringify` does.
    pub(crate) fn to_value(&self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Num(n) => number_value(*n),
            Val::Str(s) => Value::String(s.to_string()),
            Val::Json(v) => (*v).clone(),
            Val::Own(v) => (**v).clone(),
            Val::List(l) => Value::Array(l.iter().map(Val::to_value).collect()),
            Val::Map(m) => Value::Object((*m).clone()),
            Val::Steps(steps) => Value::Object(
                steps
                    .iter()
                    .map(|(id, step)| (id.clone(), step_value(step)))
                    .collect(),
            ),
            Val::Step(step) => step_value(step),
        }
    }
}

fn step_value(step: &StepState) -> Value {
    let mut m = Map::new();
    m.insert("status".into(), Value::String(step.status.clone()));
    m.insert("outputs".into(), Value::Object(step.outputs.clone()));
    Value::Object(m)
}

/// A JSON value made during evaluation; scalars become plain values.
pub(crate) fn owned<'s>(v: Value) -> Val<'s> {
    match v {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(b),
        Value::String(s) => Val::Str(Cow::Owned(s)),
        v => Val::Own(Rc::new(v)),
    }
}

/// A number as JSON: an integer when it is whole and exact, null when it is not finite.
pub(crate) fn number_value(n: f64) -> Value {
    // 2^53: past it not every integer is a distinct f64.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    if n.fract() == 0.0 && n.abs() <= EXACT {
        #[allow(
            clippy::cast_possible_truncation,
            reason = "a whole number no larger than 2^53 fits i64 exactly"
        )]
        return Value::Number(Number::from(n as i64));
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn map_get<'m>(m: &'m Map<String, Value>, key: &str) -> Option<&'m Value> {
    m.get(key)
        .or_else(|| m.iter().find(|(k, _)| same_name(k, key)).map(|(_, v)| v))
}

/// Whether two names are the same without regard to case, as GitHub compares names and
/// strings.
pub(crate) fn same_name(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    fold(a) == fold(b)
}

/// A string in the form GitHub compares strings in: upper case, except that the dotless `ı`
/// stays as it is (so that it does not equal `I`).
pub(crate) fn fold(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| !b.is_ascii_lowercase() && b.is_ascii()) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == 'ı' {
            out.push(c);
        } else {
            out.extend(c.to_uppercase());
        }
    }
    Cow::Owned(out)
}

/// Brings two values to one kind for `==` and ordering, by GitHub's rules (JavaScript's
/// loose equality, except that objects and arrays are never converted): a number and a string
/// compare as numbers, and null and booleans become numbers when the other side differs.
fn coerce<'a, 's>(a: &'a Val<'s>, b: &'a Val<'s>) -> (Cow<'a, Val<'s>>, Cow<'a, Val<'s>>) {
    let (ka, kb) = (a.kind(), b.kind());
    if ka == kb {
        return (Cow::Borrowed(a), Cow::Borrowed(b));
    }
    let num = |v: &Val<'s>| Cow::Owned(Val::Num(v.number()));
    match (ka, kb) {
        (Kind::Number, Kind::String) => (Cow::Borrowed(a), num(b)),
        (Kind::String, Kind::Number) => (num(a), Cow::Borrowed(b)),
        (Kind::Null | Kind::Bool, _) => {
            let a = Val::Num(a.number());
            let (a, b) = coerce(&a, b);
            (Cow::Owned(a.into_owned()), Cow::Owned(b.into_owned()))
        }
        (_, Kind::Null | Kind::Bool) => {
            let b = Val::Num(b.number());
            let (a, b) = coerce(a, &b);
            (Cow::Owned(a.into_owned()), Cow::Owned(b.into_owned()))
        }
        _ => (Cow::Borrowed(a), Cow::Borrowed(b)),
    }
}

/// GitHub's `==`.
pub(crate) fn equals(a: &Val, b: &Val) -> bool {
    let (a, b) = coerce(a, b);
    if a.kind() != b.kind() {
        return false;
    }
    match a.kind() {
        Kind::Null => true,
        Kind::Number => a.number() == b.number(),
        Kind::String => {
            let (x, y) = (
                a.as_str().unwrap_or_default(),
                b.as_str().unwrap_or_default(),
            );
            x == y || fold(x) == fold(y)
        }
        Kind::Bool => a.as_bool() == b.as_bool(),
        Kind::Array | Kind::Object => a.identity() == b.identity(),
    }
}

/// GitHub's ordering: numbers, strings (without regard to case) and booleans order; other
/// pairs, and NaN, are neither less nor greater.
pub(crate) fn order(a: &Val, b: &Val) -> Option<Ordering> {
    let (a, b) = coerce(a, b);
    if a.kind() != b.kind() {
        return None;
    }
    match a.kind() {
        Kind::Number => a.number().partial_cmp(&b.number()),
        Kind::String => {
            let (x, y) = (
                a.as_str().unwrap_or_default(),
                b.as_str().unwrap_or_default(),
            );
            Some(fold(x).cmp(&fold(y)))
        }
        Kind::Bool => a.as_bool().partial_cmp(&b.as_bool()),
        Kind::Null | Kind::Array | Kind::Object => None,
    }
}

/// JavaScript's `Number(text)`: surrounding white space is ignored, the empty string is 0,
/// decimal (with sign, fraction and exponent), `Infinity`, and unsigned `0x`, `0o` and `0b`
/// integers are read; anything else is NaN.
pub(crate) fn js_number(text: &str) -> f64 {
    let t = text.trim_matches(is_js_space);
    if t.is_empty() {
        return 0.0;
    }
    let radix = |prefix: [&str; 2], radix: u32| {
        prefix.iter().find_map(|p| t.strip_prefix(p)).map(|digits| {
            if digits.is_empty() {
                return f64::NAN;
            }
            digits
                .chars()
                .try_fold(0.0f64, |acc, c| {
                    c.to_digit(radix)
                        .map(|d| acc * f64::from(radix) + f64::from(d))
                })
                .unwrap_or(f64::NAN)
        })
    };
    if let Some(n) = radix(["0x", "0X"], 16)
        .or_else(|| radix(["0o", "0O"], 8))
        .or_else(|| radix(["0b", "0B"], 2))
    {
        return n;
    }
    let (sign, unsigned) = match t.as_bytes()[0] {
        b'-' => (-1.0, &t[1..]),
        b'+' => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if unsigned == "Infinity" {
        return sign * f64::INFINITY;
    }
    if !is_decimal(unsigned) {
        return f64::NAN;
    }
    unsigned.parse::<f64>().map_or(f64::NAN, |n| sign * n)
}

/// `digits[.digits][e[+-]digits]` or `.digits[…]`: what JavaScript reads as a decimal, and
/// nothing Rust's parser would also take (`inf`, `nan`).
fn is_decimal(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// JavaScript's white space and line terminators, which `Number()` trims.
fn is_js_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A number as GitHub writes it into text: rounded to 15 decimal places (so that 0.1 + 0.2
/// style noise does not show), then in JavaScript's shortest form; -0 is `0`.
pub(crate) fn number_to_string(n: f64) -> String {
    if n == 0.0 {
        return "0".into();
    }
    if !n.is_finite() || n.abs() >= 1e21 {
        return js_to_string(n);
    }
    let rounded: f64 = format!("{n:.15}").parse().unwrap_or(n);
    js_to_string(rounded)
}

/// JavaScript's `Number.prototype.toString()`: the shortest digits that read back as `n`,
/// written plainly from 1e-6 up to 1e21 and with an exponent outside that.
pub(crate) fn js_to_string(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n == 0.0 {
        return "0".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if n < 0.0 {
        return format!("-{}", js_to_string(-n));
    }
    // `{:e}` gives the shortest round-trip digits: `1.2345e-7`.
    let sci = format!("{n:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = i64::try_from(digits.len()).unwrap_or(i64::MAX);
    // The decimal point sits after `point` digits.
    let point = exp.parse::<i64>().unwrap_or(0) + 1;
    let zeros = |count: i64| "0".repeat(usize::try_from(count).unwrap_or(0));
    if k <= point && point <= 21 {
        format!("{digits}{}", zeros(point - k))
    } else if 0 < point && point <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(point).unwrap_or(0));
        format!("{int}.{frac}")
    } else if -6 < point && point <= 0 {
        format!("0.{}{digits}", zeros(-point))
    } else {
        let e = point - 1;
        let sign = if e < 0 { '-' } else { '+' };
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{first}e{sign}{}", e.abs())
        } else {
            format!("{first}.{rest}e{sign}{}", e.abs())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn javascript_number_reading() {
        for (text, n) in [
            ("", 0.0),
            ("  ", 0.0),
            (" 0xff ", 255.0),
            ("0XfF", 255.0),
            ("0o10", 8.0),
            ("0b101", 5.0),
            ("+1.2e2", 120.0),
            ("-.5", -0.5),
            ("5.", 5.0),
            ("1.e1", 10.0),
            (" -Infinity ", f64::NEG_INFINITY),
        ] {
            assert_eq!(js_number(text), n, "{text:?}");
        }
        for text in [
            "abc", "-0x1", "1e", ".", "e5", "inf", "nan", "NaN", "1_000", "0x",
        ] {
            assert!(js_number(text).is_nan(), "{text:?}");
        }
    }

    #[test]
    fn numbers_are_written_as_github_writes_them() {
        for (n, text) in [
            (1.0, "1"),
            (-0.0, "0"),
            (0.5, "0.5"),
            (123_456.789, "123456.789"),
            (
                "0.84551240822557006".parse().unwrap_or_default(),
                "0.84551240822557",
            ),
            (1.2e-2, "0.012"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(number_to_string(n), text, "{n}");
        }
    }
}
