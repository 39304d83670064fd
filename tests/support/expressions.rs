//! Runs `${{ }}` expression cases through the real `shiphat` binary and says, case by case,
//! whether shiphat agrees with the expected result, which is GitHub Actions' result.
//!
//! Shared by `tests/expressions.rs` (our own cases, `tests/fixtures/expressions/*.yaml`) and
//! `cargo xtask expr-conformance DIR` (GitHub's own test data, which we may read but not
//! copy). The xtask includes this file with `#[path]`, so it uses nothing but std,
//! serde_json, libc and tempfile, which both have.
//!
//! Each case runs two ways. A step `ctx_N` (the `echo` plugin) returns the case's contexts as
//! its outputs, and the expression, with each context name `NAME` rewritten to
//! `steps.ctx_N.outputs.NAME` (see [`rewrite`]), is then read:
//! - **as a value**: step `value_N` (echo, `needs: ctx_N`) has
//!   `with: {outputs: {v: "${{ EXPR }}"}}`, and its output `v` must equal the expected value:
//!   same kind, numbers compared numerically (1 and 1.0 agree), objects without regard to the
//!   order of their keys;
//! - **as `if:`**: step `cond_N` (echo, `needs: ctx_N`) has `if: ${{ EXPR }}`, and must have
//!   run when the expected value is truthy (GitHub's truthiness: `null`, `false`, `0`, `-0`,
//!   `NaN` and `''` are false, everything else, `{}` and `[]` included, is true) and been
//!   skipped otherwise.
//!
//! An expected `refused` (GitHub's lexing and parsing errors) means `shiphat run` refuses the
//! file before anything runs: a non-zero exit, no run events, an error on stderr. An expected
//! `fails` (GitHub's evaluation errors) means the `value` step fails and the `cond` step fails.
//! Only the kind of outcome is compared, never the message.
//!
//! Key order: GitHub keeps an object's keys in the order they came, which `toJSON` and `.*`
//! show. The contexts reach the expression through serde_json here, in shiphat and in the
//! `echo` plugin (a workspace of its own), each of which sorts keys unless its serde_json has
//! the `preserve_order` feature; a case whose contexts are not already in sorted order agrees
//! only when all three keep the order.
//!
//! Speed: cases that should not refuse the file run in batches, one workflow per batch, with
//! `continue_on_error` on the value and cond steps so that one failure does not stop the rest.
//! A batch that is refused is split in halves until the cases that refuse it run alone; a
//! batch that hangs or crashes shiphat has each of its cases run alone; a case whose step was
//! skipped in a batch where something failed runs again alone, since the skip may be the
//! engine failing fast rather than the case's own doing. Cases expected to be refused run
//! alone from the start, one workflow per way. Batches run on a few threads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::{Map, Value, json};

/// How many cases share one workflow. A batch of 25 is 75 steps, which shiphat runs in about a
/// second; larger batches would leave the threads idle at the end of a small topic, and make
/// the rerun after a refused batch cost more.
const BATCH: usize = 25;

/// How long one `shiphat run` may take before the harness kills it. A batch finishes in a
/// few seconds even on a loaded machine; a process that hangs must not hang the test.
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// The literals GitHub's lexer reads where a name could stand: never context names.
const KEYWORDS: [&str; 5] = ["true", "false", "null", "NaN", "Infinity"];

/// A context name followed by at least this many property or index accesses (`.x`, `[0]`,
/// `.*`) is put in parentheses once rewritten. GitHub's parser counts each access of a chain as
/// one of its 50 levels, so `steps.ctx_N.outputs.` in front would add three and push a case at
/// the limit over it; a group's inside is counted apart from the chain after it, so
/// `(steps.ctx_N.outputs.foo).a.b` is as deep as GitHub's `foo.a.b`. Chains as short as real
/// expressions have stay bare, so the harness asks nothing of an engine but what the case does.
const LONG_CHAIN: usize = 40;

/// Where a named-value that is not one of the case's contexts is sent: a name no shiphat
/// context has, so that GitHub's "unrecognized named-value" cases stay unrecognized even when
/// the name is one shiphat knows (`env`, `inputs`, `steps`, `run`).
const UNKNOWN_PREFIX: &str = "unknown_context_";

/// One expression case.
#[derive(Clone, Debug)]
pub struct Case {
    /// Where the case comes from, for reports: `file :: group` or `file #index`.
    pub label: String,
    pub expr: String,
    /// The named-values the expression may use, by name (matched without regard to case).
    pub contexts: Map<String, Value>,
    pub expect: Expect,
}

/// What GitHub Actions makes of a case.
#[derive(Clone, Debug, PartialEq)]
pub enum Expect {
    /// The expression's value.
    Value(Value),
    /// The workflow is refused before anything runs: GitHub's lexing and parsing errors.
    Refused,
    /// The expression fails when evaluated: GitHub's evaluation errors.
    Fails,
}

/// What shiphat made of a case read as a step's output.
#[derive(Clone, Debug, PartialEq)]
pub enum AsValue {
    Value(Value),
    Refused,
    Failed,
    Skipped,
    /// Anything else: no event for the step, a run killed at the deadline.
    Broken(String),
}

/// What shiphat made of a case read as a step's `if:`.
#[derive(Clone, Debug, PartialEq)]
pub enum AsIf {
    Ran,
    Skipped,
    Refused,
    Failed,
    Broken(String),
}

/// What shiphat made of one case, both ways, and whether each agrees with the expectation.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub as_value: AsValue,
    pub as_if: AsIf,
    pub value_agrees: bool,
    pub if_agrees: bool,
}

impl Verdict {
    pub fn agrees(&self) -> bool {
        self.value_agrees && self.if_agrees
    }
}

/// The binary under test and what it needs to find the `echo` plugin.
#[derive(Clone, Debug)]
pub struct Shiphat {
    pub binary: PathBuf,
    /// A directory holding `echo.wasm`.
    pub plugin_path: PathBuf,
    /// The compile cache, shared by every run so `echo` compiles once.
    pub cache_dir: PathBuf,
}

/// GitHub's truthiness: false for `null`, `false`, `0`, `-0`, `NaN` and `''`; true for the
/// rest, empty arrays and objects included.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// Whether two values agree: the same kind, numbers equal as numbers (`1` and `1.0`), arrays
/// element by element, objects key by key whatever their order.
pub fn same(expected: &Value, got: &Value) -> bool {
    match (expected, got) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => expected == got,
    }
}

/// GitHub's name for the kind of a value.
pub fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "Null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "String",
        Value::Array(_) => "Array",
        Value::Object(_) => "Object",
    }
}

/// The characters that end a name or a number in GitHub's lexer.
fn is_boundary(c: char) -> bool {
    matches!(
        c,
        '(' | '[' | ')' | ']' | ',' | '.' | '!' | '>' | '<' | '=' | '&' | '|'
    ) || c.is_whitespace()
}

/// A name GitHub's lexer accepts: a letter or `_`, then letters, digits, `_` and `-`.
fn is_identifier(word: &str) -> bool {
    let mut chars = word.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Rewrites each named-value of `expr` to read it from the outputs of step `step`: a name that
/// is one of `contexts` (without regard to case) becomes `steps.STEP.outputs.NAME`, as written;
/// any other becomes `unknown_context_NAME`, so it stays unknown to shiphat too. A context
/// followed by a chain of [`LONG_CHAIN`] accesses or more is rewritten in parentheses.
///
/// A named-value is a name, as GitHub's lexer reads one (up to the next boundary character),
/// that is not inside a `'…'` string (where `''` is an escaped quote), not right after a `.`
/// (a property), not followed by `(` (a function), not one of `true` `false` `null` `NaN`
/// `Infinity`, and not part of a number (`1e2`, `0xff`, `-Infinity`).
pub fn rewrite(expr: &str, contexts: &Map<String, Value>, step: &str) -> String {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = String::with_capacity(expr.len() + 32);
    let mut i = 0;
    // The last character outside whitespace, to tell a property from a named-value.
    let mut previous: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // A string, to its closing quote; `''` inside is an escaped quote.
            let start = i;
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    i += 1;
                    break;
                }
                i += 1;
            }
            out.extend(&chars[start..i]);
            previous = Some('\'');
            continue;
        }
        let starts_word = c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '+';
        if !starts_word {
            out.push(c);
            if !c.is_whitespace() {
                previous = Some(c);
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && !is_boundary(chars[i]) && chars[i] != '\'' {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let next = chars[i..].iter().find(|c| !c.is_whitespace());
        let named_value = is_identifier(&word)
            && previous != Some('.')
            && next != Some(&'(')
            && !KEYWORDS.contains(&word.as_str());
        if named_value {
            if contexts.keys().any(|k| k.eq_ignore_ascii_case(&word)) {
                if chain_length(&chars, i) >= LONG_CHAIN {
                    out.push_str(&format!("(steps.{step}.outputs.{word})"));
                } else {
                    out.push_str(&format!("steps.{step}.outputs.{word}"));
                }
            } else {
                out.push_str(UNKNOWN_PREFIX);
                out.push_str(&word);
            }
        } else {
            out.push_str(&word);
        }
        previous = word.chars().last();
    }
    out
}

/// How many property and index accesses (`.x`, `.*`, `[…]`, with spaces between as GitHub's
/// lexer allows) follow position `i` of an expression.
fn chain_length(chars: &[char], mut i: usize) -> usize {
    let skip_spaces = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
            *i += 1;
        }
    };
    let mut accesses = 0;
    loop {
        skip_spaces(&mut i);
        match chars.get(i) {
            Some('.') => {
                i += 1;
                skip_spaces(&mut i);
                while chars.get(i).is_some_and(|&c| !is_boundary(c)) {
                    i += 1;
                }
            }
            Some('[') => {
                // To the matching `]`, past nested brackets and strings.
                let mut open = 0;
                let mut in_string = false;
                while let Some(&c) = chars.get(i) {
                    i += 1;
                    match c {
                        '\'' => in_string = !in_string,
                        '[' if !in_string => open += 1,
                        ']' if !in_string => {
                            open -= 1;
                            if open == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => return accesses,
        }
        accesses += 1;
    }
}

/// Which ways a workflow reads its cases.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ways {
    Both,
    ValueOnly,
    IfOnly,
}

/// A workflow (as JSON, which is YAML) reading `cases` the given ways; case `n` of the slice
/// gets the steps `ctx_n`, `value_n` and `cond_n`. The context steps come first and need
/// nothing, so they all start before anything can fail; then the value steps, then the cond
/// steps.
fn workflow(cases: &[&Case], ways: Ways) -> String {
    let mut steps = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        steps.push(json!({
            "id": format!("ctx_{n}"),
            "uses": "echo",
            "with": {"outputs": case.contexts},
        }));
    }
    if ways != Ways::IfOnly {
        for (n, case) in cases.iter().enumerate() {
            let expr = rewrite(&case.expr, &case.contexts, &format!("ctx_{n}"));
            steps.push(json!({
                "id": format!("value_{n}"),
                "uses": "echo",
                "needs": format!("ctx_{n}"),
                "continue_on_error": true,
                "with": {"outputs": {"v": format!("${{{{ {expr} }}}}")}},
            }));
        }
    }
    if ways != Ways::ValueOnly {
        for (n, case) in cases.iter().enumerate() {
            let expr = rewrite(&case.expr, &case.contexts, &format!("ctx_{n}"));
            steps.push(json!({
                "id": format!("cond_{n}"),
                "uses": "echo",
                "needs": format!("ctx_{n}"),
                "continue_on_error": true,
                "if": format!("${{{{ {expr} }}}}"),
            }));
        }
    }
    serde_json::to_string_pretty(&json!({"name": "expression-cases", "steps": steps}))
        .expect("a workflow serialises")
}

/// How one `shiphat run` ended.
enum RunEnd {
    /// Refused before anything ran.
    Refused,
    /// It ran; its events, one JSON value a line.
    Ran(Vec<Value>),
    /// Neither: killed at the deadline, or an exit that fits neither.
    Broken(String),
}

/// Runs `command` to its end, or kills it at [`RUN_DEADLINE`]; returns its exit code (`None`
/// when a signal ended it), stdout and stderr.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped with `wait` after waitid saw it exit"
)]
fn run_bounded(mut command: Command) -> (Option<i32>, String, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    let pid = child.id();
    let read = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = read(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read(Box::new(child.stderr.take().expect("piped stderr")));
    // The watchdog kills the child at the deadline, but only while it is not reaped (so its pid
    // cannot have been reused): the main thread waits for the exit without reaping, marks it
    // under the same lock, and only then reaps.
    let reaped = Arc::new(Mutex::new(false));
    let (done, watch) = mpsc::channel::<()>();
    let watchdog = {
        let reaped = reaped.clone();
        std::thread::spawn(move || {
            if watch.recv_timeout(RUN_DEADLINE) == Err(mpsc::RecvTimeoutError::Timeout) {
                let reaped = reaped.lock().unwrap();
                if !*reaped {
                    // SAFETY: the child is not reaped yet (checked under the lock the main
                    // thread takes before reaping), so the pid is still our child's.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
            }
        })
    };
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills in.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child's exit; WNOWAIT leaves it unreaped.
        let waited = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if waited == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
        {
            break;
        }
    }
    *reaped.lock().unwrap() = true;
    let status = child.wait().expect("the child exited");
    let _ = done.send(());
    let _ = watchdog.join();
    (
        status.code(),
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    )
}

/// Runs cases through one `shiphat` binary in one temporary directory.
struct Runner<'a> {
    shiphat: &'a Shiphat,
    dir: &'a Path,
    files: AtomicUsize,
}

impl Runner<'_> {
    /// Writes a workflow and runs it with `--json`.
    fn run(&self, cases: &[&Case], ways: Ways) -> RunEnd {
        let n = self.files.fetch_add(1, Ordering::Relaxed);
        let file = self.dir.join(format!("cases-{n}.yaml"));
        std::fs::write(&file, workflow(cases, ways)).expect("the workflow is written");
        let mut command = Command::new(&self.shiphat.binary);
        command
            .current_dir(self.dir)
            .arg("run")
            .arg(&file)
            .arg("--json")
            .env_remove("SHIPHAT_SECRETS_FILE")
            .env_remove("SHIPHAT_SERVER")
            .env_remove("SHIPHAT_TOKEN")
            .env_remove("RUST_LOG")
            .env("SHIPHAT_CACHE_DIR", &self.shiphat.cache_dir)
            .env("SHIPHAT_PLUGIN_PATH", &self.shiphat.plugin_path);
        let (code, stdout, stderr) = run_bounded(command);
        let events: Vec<Value> = stdout
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect();
        let started = events.iter().any(|e| e["event"] == "run_started");
        match code {
            None => RunEnd::Broken(format!(
                "killed (past {RUN_DEADLINE:?}, or a signal): {}",
                stderr.trim()
            )),
            Some(code) if code != 0 && !started && !stderr.trim().is_empty() => RunEnd::Refused,
            Some(_) if started => RunEnd::Ran(events),
            Some(code) => {
                RunEnd::Broken(format!("exit {code} with no run events: {}", stderr.trim()))
            }
        }
    }

    /// Runs a batch, and whatever in it needs running again, alone or in halves.
    fn batch(&self, cases: &[(usize, &Case)], out: &mut Vec<(usize, AsValue, AsIf)>) {
        if let [(index, case)] = cases {
            let (as_value, as_if) = self.alone(case);
            out.push((*index, as_value, as_if));
            return;
        }
        let only: Vec<&Case> = cases.iter().map(|(_, case)| *case).collect();
        let events = match self.run(&only, Ways::Both) {
            RunEnd::Ran(events) => events,
            // Some case refuses the file: find which, by halves.
            RunEnd::Refused => {
                let (left, right) = cases.split_at(cases.len() / 2);
                self.batch(left, out);
                self.batch(right, out);
                return;
            }
            // Something hung or crashed shiphat: every case alone, so that a case that hangs
            // costs one deadline per way rather than one per halving.
            RunEnd::Broken(_) => {
                for (index, case) in cases {
                    let (as_value, as_if) = self.alone(case);
                    out.push((*index, as_value, as_if));
                }
                return;
            }
        };
        let got: Vec<(AsValue, AsIf)> = (0..cases.len())
            .map(|n| (as_value(&events, n), as_if(&events, n)))
            .collect();
        let anything_failed = got
            .iter()
            .any(|(v, c)| *v == AsValue::Failed || *c == AsIf::Failed);
        for ((index, case), (as_value, as_if)) in cases.iter().zip(got) {
            if anything_failed && (as_value == AsValue::Skipped || as_if == AsIf::Skipped) {
                let (as_value, as_if) = self.alone(case);
                out.push((*index, as_value, as_if));
            } else {
                out.push((*index, as_value, as_if));
            }
        }
    }

    /// Runs one case alone, one workflow per way, so that a refusal says which way refused.
    fn alone(&self, case: &Case) -> (AsValue, AsIf) {
        let as_value = match self.run(&[case], Ways::ValueOnly) {
            RunEnd::Ran(events) => as_value(&events, 0),
            RunEnd::Refused => AsValue::Refused,
            RunEnd::Broken(why) => AsValue::Broken(why),
        };
        let as_if = match self.run(&[case], Ways::IfOnly) {
            RunEnd::Ran(events) => as_if(&events, 0),
            RunEnd::Refused => AsIf::Refused,
            RunEnd::Broken(why) => AsIf::Broken(why),
        };
        (as_value, as_if)
    }
}

/// The `step_finished` event of a step.
fn finished<'e>(events: &'e [Value], step: &str) -> Option<&'e Value> {
    events
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
}

fn as_value(events: &[Value], n: usize) -> AsValue {
    let step = format!("value_{n}");
    let Some(event) = finished(events, &step) else {
        return AsValue::Broken(format!("no step_finished for `{step}`"));
    };
    match event["status"].as_str() {
        Some("succeeded") => match event["outputs"].get("v") {
            Some(v) => AsValue::Value(v.clone()),
            None => AsValue::Broken(format!("no output `v`: {}", event["outputs"])),
        },
        Some("failed") => AsValue::Failed,
        Some("skipped") => AsValue::Skipped,
        _ => AsValue::Broken(format!("status {}", event["status"])),
    }
}

fn as_if(events: &[Value], n: usize) -> AsIf {
    let step = format!("cond_{n}");
    let Some(event) = finished(events, &step) else {
        return AsIf::Broken(format!("no step_finished for `{step}`"));
    };
    match event["status"].as_str() {
        Some("succeeded") => AsIf::Ran,
        Some("failed") => AsIf::Failed,
        Some("skipped") => AsIf::Skipped,
        _ => AsIf::Broken(format!("status {}", event["status"])),
    }
}

/// Runs every case through `shiphat`, on a few threads, and judges each.
pub fn run_cases(shiphat: &Shiphat, cases: &[Case]) -> Vec<Verdict> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let runner = Runner {
        shiphat,
        dir: dir.path(),
        files: AtomicUsize::new(0),
    };
    // Cases that should refuse the file run alone; those that should fail are batched apart
    // from those that should not, so that a batch of values rarely sees a failure at all.
    let indexed: Vec<(usize, &Case)> = cases.iter().enumerate().collect();
    let values: Vec<(usize, &Case)> = indexed
        .iter()
        .filter(|(_, case)| matches!(case.expect, Expect::Value(_)))
        .copied()
        .collect();
    let failures: Vec<(usize, &Case)> = indexed
        .iter()
        .filter(|(_, case)| case.expect == Expect::Fails)
        .copied()
        .collect();
    let mut jobs: Vec<Vec<(usize, &Case)>> = Vec::new();
    jobs.extend(values.chunks(BATCH).map(<[_]>::to_vec));
    jobs.extend(failures.chunks(BATCH).map(<[_]>::to_vec));
    jobs.extend(
        indexed
            .iter()
            .filter(|(_, case)| case.expect == Expect::Refused)
            .map(|&one| vec![one]),
    );
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get() + 1);
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(cases.len()));
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let Some(job) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let mut out = Vec::new();
                    runner.batch(job, &mut out);
                    results.lock().unwrap().extend(out);
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(index, _, _)| *index);
    assert_eq!(results.len(), cases.len(), "every case has a result");
    results
        .into_iter()
        .map(|(index, as_value, as_if)| judge(&cases[index].expect, as_value, as_if))
        .collect()
}

/// Compares what shiphat did with what GitHub does.
fn judge(expect: &Expect, as_value: AsValue, as_if: AsIf) -> Verdict {
    let (value_agrees, if_agrees) = match expect {
        Expect::Value(expected) => (
            matches!(&as_value, AsValue::Value(got) if same(expected, got)),
            as_if
                == if truthy(expected) {
                    AsIf::Ran
                } else {
                    AsIf::Skipped
                },
        ),
        Expect::Refused => (as_value == AsValue::Refused, as_if == AsIf::Refused),
        Expect::Fails => (as_value == AsValue::Failed, as_if == AsIf::Failed),
    };
    Verdict {
        as_value,
        as_if,
        value_agrees,
        if_agrees,
    }
}

fn describe_expect(expect: &Expect) -> String {
    match expect {
        Expect::Value(v) => format!("{v} ({}, {})", kind(v), describe_truth(v)),
        Expect::Refused => "refused".into(),
        Expect::Fails => "fails".into(),
    }
}

fn describe_truth(value: &Value) -> &'static str {
    if truthy(value) { "truthy" } else { "falsy" }
}

fn describe_value(got: &AsValue) -> String {
    match got {
        AsValue::Value(v) => format!("{v} ({})", kind(v)),
        AsValue::Refused => "refused".into(),
        AsValue::Failed => "failed".into(),
        AsValue::Skipped => "skipped".into(),
        AsValue::Broken(why) => format!("broken: {why}"),
    }
}

fn describe_if(got: &AsIf) -> String {
    match got {
        AsIf::Ran => "ran".into(),
        AsIf::Skipped => "skipped".into(),
        AsIf::Refused => "refused".into(),
        AsIf::Failed => "failed".into(),
        AsIf::Broken(why) => format!("broken: {why}"),
    }
}

/// The cases that disagree, one paragraph each: where from, the expression, its contexts,
/// what GitHub does, and what shiphat did each way (marked `✗` where it disagrees).
pub fn disagreements(cases: &[Case], verdicts: &[Verdict]) -> String {
    let mut text = String::new();
    for (case, verdict) in cases.iter().zip(verdicts) {
        if verdict.agrees() {
            continue;
        }
        let mark = |agrees: bool| if agrees { "✓" } else { "✗" };
        text.push_str(&format!("[{}] {}\n", case.label, case.expr));
        if !case.contexts.is_empty() {
            text.push_str(&format!(
                "    contexts: {}\n",
                Value::Object(case.contexts.clone())
            ));
        }
        text.push_str(&format!(
            "    expected {}\n    {} as value: {}\n    {} as if:    {}\n",
            describe_expect(&case.expect),
            mark(verdict.value_agrees),
            describe_value(&verdict.as_value),
            mark(verdict.if_agrees),
            describe_if(&verdict.as_if),
        ));
    }
    text
}

/// A table of agreement, one row per group of cases (a file), and a total.
pub fn table(groups: &[(&str, &[Verdict])]) -> String {
    let width = groups
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0)
        .max("total".len());
    let row = |name: &str, verdicts: Vec<&Verdict>| {
        let count = |f: fn(&Verdict) -> bool| verdicts.iter().filter(|&&v| f(v)).count();
        format!(
            "{name:<width$}  {:>5}  {:>8}  {:>8}  {:>8}\n",
            verdicts.len(),
            count(|v| v.value_agrees),
            count(|v| v.if_agrees),
            count(Verdict::agrees),
        )
    };
    let mut text = format!(
        "{:<width$}  {:>5}  {:>8}  {:>8}  {:>8}\n",
        "file", "cases", "as value", "as if", "both"
    );
    for (name, verdicts) in groups {
        text.push_str(&row(name, verdicts.iter().collect()));
    }
    text.push_str(&row(
        "total",
        groups
            .iter()
            .flat_map(|(_, verdicts)| verdicts.iter())
            .collect(),
    ));
    text
}
