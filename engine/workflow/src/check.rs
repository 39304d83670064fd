//! From text to a checked [`Workflow`]: the pre-pass, unknown keys, serde, then every semantic
//! check, collecting all problems rather than stopping at the first.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::config::ConfigValue;
use crate::expr::{Changes, Expr, Kind, RefRules, Template, TypeOf, check_refs, meaning_changes};
use crate::grants::{self, Grant, HostPattern};
use crate::inputs::parse_value;
use crate::plan::{Approval, DEFAULT_APPROVAL_TIMEOUT, MAX_REQUIRED_APPROVALS, StepKind};
use crate::prepass::{self, Positions, Refusal};
use crate::raw::{self, RawStep, RawWorkflow};
use crate::units::{parse_duration, parse_size};
use crate::{
    Allow, Concurrency, Diagnostic, Diagnostics, Error, Input, InputKind, KeyLocations, Limits,
    Location, MAX_EXPANDED_NODES, OutsideWindow, PluginRef, Result, Resume, Retries, Step,
    Workflow,
};

struct Cx<'a> {
    file: &'a Path,
    positions: Positions,
    diags: Vec<Diagnostic>,
    /// Not errors: notes on what a workflow written for shiphat's rules before GitHub's now
    /// means, each once, for `validate` to show.
    warnings: Vec<Diagnostic>,
    /// What is known of each input's value, for those notes.
    input_types: Vec<(String, TypeOf)>,
}

impl Cx<'_> {
    fn at(&mut self, location: Option<Location>, message: String) {
        self.diags.push(Diagnostic {
            file: self.file.to_path_buf(),
            location,
            message,
        });
    }

    /// Reports `message` at `path` (or its nearest ancestor with a position).
    fn err(&mut self, path: &str, message: String) {
        let location = self.positions.find(path);
        self.at(location, message);
    }

    /// Notes `message` at `path`, once.
    fn warn(&mut self, path: &str, message: String) {
        let location = self.positions.find(path);
        let warning = Diagnostic {
            file: self.file.to_path_buf(),
            location,
            message,
        };
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }

    /// Notes where `expr`'s meaning changed with GitHub's rules.
    fn note_changes(&mut self, path: &str, what: &str, expr: &Expr, is_value: bool) {
        let inputs: Vec<(&str, TypeOf)> = self
            .input_types
            .iter()
            .map(|(n, t)| (n.as_str(), *t))
            .collect();
        let changes = meaning_changes(
            expr,
            &Changes {
                inputs: &inputs,
                is_value,
            },
        );
        for note in changes {
            self.warn(path, format!("{what}{note}"));
        }
    }

    fn finish(mut self) -> Error {
        self.diags.sort_by_key(|d| d.location);
        Error::Invalid(Diagnostics(self.diags))
    }
}

fn invalid(file: &Path, location: Option<Location>, message: String) -> Error {
    Error::Invalid(Diagnostics(vec![Diagnostic {
        file: file.to_path_buf(),
        location,
        message,
    }]))
}

pub(crate) fn parse(text: &str, file: &Path) -> Result<Workflow> {
    let root = match prepass::scan(text) {
        Ok(root) => root,
        Err(Refusal::Syntax(at, message)) => return Err(invalid(file, at, message)),
        Err(Refusal::TooManyNodes(at)) => {
            return Err(invalid(
                file,
                Some(at),
                format!(
                    "aliases expand this document past {MAX_EXPANDED_NODES} nodes; refusing it to bound memory (repeat less through `*` aliases)"
                ),
            ));
        }
    };
    let mut cx = Cx {
        file,
        positions: Positions::new(root.as_ref()),
        diags: Vec::new(),
        warnings: Vec::new(),
        input_types: Vec::new(),
    };
    if let Some(root) = &root {
        for (at, message) in crate::keys::unknown_keys(root) {
            cx.at(Some(at), message);
        }
        if !cx.diags.is_empty() {
            return Err(cx.finish());
        }
    }
    let raw: RawWorkflow = match serde_yaml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let location = e.location().map(|l| Location {
                line: l.line(),
                column: l.column(),
            });
            let mut message = e.to_string();
            // The position is shown in front, as in every other diagnostic.
            if let Some(i) = message.rfind(" at line ") {
                message.truncate(i);
            }
            return Err(invalid(file, location, message));
        }
    };
    let mut workflow = check(&mut cx, raw);
    if cx.diags.is_empty() {
        cx.warnings.sort_by_key(|d| d.location);
        workflow.warnings = cx.warnings;
        Ok(workflow)
    } else {
        Err(cx.finish())
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn is_var_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_input_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// `map`'s entries in the order they appear in the file (serde hands us a sorted map).
fn in_file_order<T>(cx: &Cx, prefix: &str, map: BTreeMap<String, T>) -> Vec<(String, T)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by_key(|(k, _)| cx.positions.find(&prepass::join(prefix, k)));
    v
}

fn check(cx: &mut Cx, raw: RawWorkflow) -> Workflow {
    let base_dir = crate::base_dir(cx.file);

    let inputs = check_inputs(cx, raw.inputs);
    cx.input_types = inputs
        .iter()
        .map(|i| {
            let kind = match i.kind {
                InputKind::String | InputKind::Choice(_) => Kind::String,
                InputKind::Number => Kind::Number,
                InputKind::Bool => Kind::Bool,
            };
            let maybe_null = !i.required && i.default.is_none();
            (
                i.name.clone(),
                TypeOf {
                    kind: Some(kind),
                    maybe_null,
                },
            )
        })
        .collect();
    let input_names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();

    let mut env = Vec::new();
    for (name, value) in in_file_order(cx, "env", raw.env) {
        let path = prepass::join("env", &name);
        if !is_var_name(&name) {
            cx.err(
                &path,
                format!("invalid env name `{name}`; expected letters, digits and `_`, not starting with a digit"),
            );
        }
        let rules = RefRules {
            inputs: &input_names,
            env: None,
            steps: None,
        };
        if let Some(t) = template(cx, &path, &format!("env `{name}`: "), &value, &rules) {
            env.push((name, t));
        }
    }
    let env_names: Vec<&str> = env.iter().map(|(n, _)| n.as_str()).collect();

    let concurrency = raw.concurrency.and_then(|c| {
        let (key, queue, path) = match c {
            raw::RawConcurrency::Key(k) => (k, true, "concurrency"),
            raw::RawConcurrency::Full { key, queue } => (key, queue, "concurrency.key"),
        };
        let rules = RefRules {
            inputs: &input_names,
            env: Some(&env_names),
            steps: None,
        };
        template(cx, path, "`concurrency`: ", &key, &rules).map(|key| Concurrency { key, queue })
    });

    let resume = match raw.resume {
        None | Some(raw::RawResume::Manual) => Resume::Manual,
        Some(raw::RawResume::Auto) => Resume::Auto,
    };
    let outside_window = match raw.outside_window {
        None | Some(raw::RawOutsideWindow::Refuse) => OutsideWindow::Refuse,
        Some(raw::RawOutsideWindow::Wait) => OutsideWindow::Wait,
    };

    if raw.steps.is_empty() {
        cx.err(
            "steps",
            "`steps` is empty; a workflow needs at least one step".into(),
        );
    }

    // Ids are unique across the whole file so that `steps.<id>` is never ambiguous.
    let mut seen: HashMap<&str, Option<Location>> = HashMap::new();
    let mut duplicates = Vec::new();
    for (section, list) in [
        ("steps", &raw.steps),
        ("on_failure", &raw.on_failure),
        ("finally", &raw.finally),
    ] {
        for (i, s) in list.iter().enumerate() {
            let path = format!("{section}[{i}].id");
            let here = cx.positions.find(&path);
            match seen.get(s.id.as_str()) {
                Some(first) => duplicates.push((path, s.id.clone(), *first)),
                None => {
                    seen.insert(&s.id, here);
                }
            }
        }
    }
    for (path, id, first) in duplicates {
        let also = first
            .map(|l| format!("; first used at line {}", l.line))
            .unwrap_or_default();
        cx.err(&path, format!("duplicate step id `{id}`{also}"));
    }

    let main_ids: Vec<String> = raw.steps.iter().map(|s| s.id.clone()).collect();
    let all_ids: Vec<String> = raw
        .steps
        .iter()
        .chain(&raw.on_failure)
        .chain(&raw.finally)
        .map(|s| s.id.clone())
        .collect();
    let sections = SectionIds {
        main: &main_ids,
        on_failure: &raw
            .on_failure
            .iter()
            .map(|s| s.id.clone())
            .collect::<Vec<_>>(),
        finally: &raw.finally.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
    };
    let names = Names {
        inputs: &input_names,
        env: &env_names,
        all_steps: &all_ids.iter().map(String::as_str).collect::<Vec<_>>(),
        base_dir: &base_dir,
        sections: &sections,
    };
    let steps = check_section(cx, "steps", raw.steps, &names);
    let on_failure = check_section(cx, "on_failure", raw.on_failure, &names);
    let finally = check_section(cx, "finally", raw.finally, &names);

    Workflow {
        name: raw.name,
        description: raw.description,
        file: cx.file.to_path_buf(),
        base_dir,
        inputs,
        env,
        concurrency,
        resume,
        outside_window,
        steps,
        on_failure,
        finally,
        warnings: Vec::new(),
    }
}

fn check_inputs(cx: &mut Cx, raw: BTreeMap<String, raw::RawInput>) -> Vec<Input> {
    let mut out = Vec::new();
    for (name, input) in in_file_order(cx, "inputs", raw) {
        let path = prepass::join("inputs", &name);
        if !is_input_name(&name) {
            cx.err(
                &path,
                format!("invalid input name `{name}`; expected letters, digits, `_` and `-`, starting with a letter"),
            );
        }
        let kind = match (input.kind, input.choices) {
            (raw::RawInputKind::Choice, Some(choices)) if !choices.is_empty() => {
                InputKind::Choice(choices)
            }
            (raw::RawInputKind::Choice, _) => {
                cx.err(
                    &path,
                    format!(
                        "input `{name}` is a `choice` but has no `choices`; list the allowed values"
                    ),
                );
                InputKind::Choice(Vec::new())
            }
            (other, choices) => {
                if choices.is_some() {
                    cx.err(
                        &format!("{path}.choices"),
                        format!("input `{name}`: `choices` is only for inputs of type `choice`"),
                    );
                }
                match other {
                    raw::RawInputKind::String => InputKind::String,
                    raw::RawInputKind::Number => InputKind::Number,
                    _ => InputKind::Bool,
                }
            }
        };
        let default = input.default.and_then(|d| {
            let at = format!("{path}.default");
            let value = match serde_json::to_value(&d) {
                Ok(v) => v,
                Err(e) => {
                    cx.err(&at, format!("input `{name}`: unsupported default: {e}"));
                    return None;
                }
            };
            let ok = match &kind {
                InputKind::String => value.is_string(),
                InputKind::Number => value.is_number(),
                InputKind::Bool => value.is_boolean(),
                InputKind::Choice(_) => value.is_string(),
            };
            if !ok {
                cx.err(
                    &at,
                    format!(
                        "input `{name}`: default `{value}` is not a {}",
                        kind_name(&kind)
                    ),
                );
                return None;
            }
            if let (InputKind::Choice(choices), Value::String(s)) = (&kind, &value)
                && let Err(why) = parse_value(&kind, s)
            {
                // A choice without `choices` is reported once, above, not again per default.
                if !choices.is_empty() {
                    cx.err(&at, format!("input `{name}`: default {why}"));
                }
                return None;
            }
            Some(value)
        });
        out.push(Input {
            name,
            description: input.description,
            kind,
            default,
            required: input.required,
        });
    }
    out
}

use serde_json::Value;

fn kind_name(kind: &InputKind) -> &'static str {
    match kind {
        InputKind::String => "string",
        InputKind::Number => "number",
        InputKind::Bool => "bool",
        InputKind::Choice(_) => "choice",
    }
}

/// Parses a template and checks what it refers to, reporting problems at `path`.
fn template(cx: &mut Cx, path: &str, what: &str, text: &str, rules: &RefRules) -> Option<Template> {
    match Template::parse(text) {
        Ok(t) => {
            for e in t.exprs() {
                for problem in check_refs(e, rules) {
                    cx.err(path, format!("{what}{problem}"));
                }
                if e.calls_status() {
                    cx.err(
                        path,
                        format!(
                            "{what}`{e}`: the status functions `success()`, `failure()`, `always()` and `cancelled()` can only be used in a step's `if:`"
                        ),
                    );
                }
                cx.note_changes(path, what, e, true);
            }
            Some(t)
        }
        Err(e) => {
            cx.err(path, format!("{what}{e}"));
            None
        }
    }
}

struct SectionIds<'a> {
    main: &'a [String],
    on_failure: &'a [String],
    finally: &'a [String],
}

struct Names<'a> {
    inputs: &'a [&'a str],
    env: &'a [&'a str],
    all_steps: &'a [&'a str],
    base_dir: &'a Path,
    sections: &'a SectionIds<'a>,
}

fn check_section(cx: &mut Cx, section: &str, raw: Vec<RawStep>, names: &Names) -> Vec<Step> {
    let own: Vec<String> = raw.iter().map(|s| s.id.clone()).collect();
    // Resolve `needs` first: reference checks need the whole section's graph.
    let mut needs: Vec<Vec<usize>> = Vec::new();
    for (i, s) in raw.iter().enumerate() {
        let mut list = Vec::new();
        let written = s.needs.as_ref().map(raw::OneOrMany::to_vec);
        let single = matches!(s.needs, Some(raw::OneOrMany::One(_)));
        for (j, need) in written.unwrap_or_default().into_iter().enumerate() {
            let path = if single {
                format!("{section}[{i}].needs")
            } else {
                format!("{section}[{i}].needs[{j}]")
            };
            let id = &s.id;
            if let Some(k) = own.iter().position(|o| *o == need) {
                if k == i {
                    cx.err(&path, format!("step `{id}` needs itself"));
                } else if !list.contains(&k) {
                    list.push(k);
                }
            } else if let Some(other) = section_of(names.sections, &need) {
                cx.err(
                    &path,
                    format!("step `{id}` needs `{need}`, which is in `{other}`; `needs` may only name steps in the same section (`{section}`)"),
                );
            } else {
                cx.err(
                    &path,
                    format!(
                        "step `{id}` needs unknown step `{need}`{}",
                        crate::did_you_mean(&need, own.iter().map(String::as_str))
                    ),
                );
            }
        }
        needs.push(list);
    }
    report_cycles(cx, section, &own, &needs);

    let mut out = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let mut upstream: Vec<&str> = Vec::new();
        if section != "steps" {
            // Clean-up sections run after the main steps and may read any of them.
            upstream.extend(names.sections.main.iter().map(String::as_str));
        }
        for k in closure(i, &needs) {
            upstream.push(&own[k]);
        }
        let rules = RefRules {
            inputs: names.inputs,
            env: Some(names.env),
            steps: Some((names.all_steps, &upstream)),
        };
        let step = check_step(
            cx,
            &format!("{section}[{i}]"),
            s,
            needs[i].clone(),
            &rules,
            names.base_dir,
        );
        out.push(step);
    }
    out
}

fn section_of<'a>(sections: &SectionIds, id: &str) -> Option<&'a str> {
    let has = |v: &[String]| v.iter().any(|x| x == id);
    if has(sections.main) {
        Some("steps")
    } else if has(sections.on_failure) {
        Some("on_failure")
    } else if has(sections.finally) {
        Some("finally")
    } else {
        None
    }
}

/// Every step reachable from `start` through `needs`, not counting `start` itself.
fn closure(start: usize, needs: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; needs.len()];
    let mut stack = needs[start].clone();
    let mut out = Vec::new();
    while let Some(k) = stack.pop() {
        if k == start || std::mem::replace(&mut seen[k], true) {
            continue;
        }
        out.push(k);
        stack.extend(&needs[k]);
    }
    out
}

/// Reports each `needs` cycle once, as `a -> b -> a`.
fn report_cycles(cx: &mut Cx, section: &str, ids: &[String], needs: &[Vec<usize>]) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: usize,
        needs: &[Vec<usize>],
        marks: &mut [Mark],
        path: &mut Vec<usize>,
        cycles: &mut Vec<Vec<usize>>,
    ) {
        marks[n] = Mark::Open;
        path.push(n);
        for &m in &needs[n] {
            match marks[m] {
                Mark::New => visit(m, needs, marks, path, cycles),
                Mark::Open => {
                    let from = path.iter().position(|&p| p == m).unwrap_or(0);
                    cycles.push(path[from..].to_vec());
                }
                Mark::Done => {}
            }
        }
        path.pop();
        marks[n] = Mark::Done;
    }
    let mut marks = vec![Mark::New; ids.len()];
    let mut cycles = Vec::new();
    for n in 0..ids.len() {
        if marks[n] == Mark::New {
            visit(n, needs, &mut marks, &mut Vec::new(), &mut cycles);
        }
    }
    for cycle in cycles {
        let mut names: Vec<&str> = cycle.iter().map(|&k| ids[k].as_str()).collect();
        names.push(names[0]);
        cx.err(
            &format!("{section}[{}].needs", cycle[0]),
            format!("`needs` form a cycle: {}", names.join(" -> ")),
        );
    }
}

fn check_step(
    cx: &mut Cx,
    path: &str,
    s: RawStep,
    needs: Vec<usize>,
    rules: &RefRules,
    base_dir: &Path,
) -> Step {
    let id = s.id.clone();
    let at = |key: &str| format!("{path}.{key}");
    let what = format!("step `{id}`: ");
    if !is_id(&id) {
        cx.err(
            &at("id"),
            format!("invalid step id `{id}`; expected lowercase letters, digits, `-` and `_`"),
        );
    }

    let kind = match (s.uses, s.approval) {
        (Some(uses), None) => StepKind::Plugin(match parse_uses(&uses, base_dir) {
            Ok(u) => u,
            Err(e) => {
                cx.err(&at("uses"), format!("{what}{e}"));
                no_plugin()
            }
        }),
        (None, Some(approval)) => {
            // What configures a plugin means nothing to a person: refuse it rather than
            // ignore it, so nobody believes a grant or a retry applies.
            let plugin_keys = [
                ("with", s.with.is_some()),
                ("allow", s.allow.is_some()),
                ("memory", s.memory.is_some()),
                ("stack", s.stack.is_some()),
                ("log_limit", s.log_limit.is_some()),
                ("output_limit", s.output_limit.is_some()),
                ("retries", s.retries.is_some()),
                ("idempotent", s.idempotent),
            ];
            for (key, _) in plugin_keys.iter().filter(|(_, given)| *given) {
                cx.err(
                    &at(key),
                    format!("{what}`{key}` does not apply to an approval step, which runs no plugin; remove it"),
                );
            }
            StepKind::Approval(check_approval(cx, &at("approval"), &what, approval, rules))
        }
        (Some(_), Some(_)) => {
            cx.err(
                &at("approval"),
                format!("{what}has both `uses` and `approval`; a step either runs a plugin or asks people, so split it in two"),
            );
            StepKind::Plugin(no_plugin())
        }
        (None, None) => {
            cx.err(
                path,
                format!("{what}needs `uses` (a plugin to run) or `approval` (people to ask)"),
            );
            StepKind::Plugin(no_plugin())
        }
    };

    let condition = s.condition.and_then(|c| match Expr::parse_condition(&c.0) {
        Ok(e) => {
            for problem in check_refs(&e, rules) {
                cx.err(&at("if"), format!("{what}`if`: {problem}"));
            }
            cx.note_changes(&at("if"), &format!("{what}`if`: "), &e, false);
            if !e.calls_status() && !needs.is_empty() {
                let reads_status = e.source().contains(".status");
                let hint = if reads_status {
                    " (so a test of a needed step's `.status` against 'failed' can never be true here)"
                } else {
                    ""
                };
                cx.warn(
                    &at("if"),
                    format!(
                        "{what}`if: {e}` calls no status function, so it now means `success() && ({e})`, as in GitHub Actions: the step is skipped when a step it needs did not succeed{hint}; before, it ran whatever they ended with. Write `always() && ({e})` to run it whatever they end with, or `failure() && …` to run it only after a failure"
                    ),
                );
            }
            Some(e)
        }
        Err(e) => {
            cx.err(&at("if"), format!("{what}`if`: {e}"));
            None
        }
    });

    let with = match s.with {
        Some(m) => config_value(cx, &at("with"), &what, serde_yaml::Value::Mapping(m), rules),
        None => ConfigValue::Object(Vec::new()),
    };

    let allow = check_allow(
        cx,
        path,
        &what,
        s.allow.unwrap_or_default(),
        rules,
        base_dir,
    );

    let mut limits = Limits::default();
    let size = |cx: &mut Cx, key: &str, v: Option<raw::Text>| -> Option<u64> {
        let v = v?;
        match parse_size(&v.0) {
            Ok(0) => {
                cx.err(&at(key), format!("{what}`{key}` must be more than zero"));
                None
            }
            Ok(n) => Some(n),
            Err(e) => {
                cx.err(&at(key), format!("{what}{e}"));
                None
            }
        }
    };
    if let Some(n) = size(cx, "memory", s.memory) {
        limits.memory = n;
    }
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = size(cx, "stack", s.stack) {
        limits.stack = to_usize(n);
    }
    if let Some(n) = size(cx, "log_limit", s.log_limit) {
        limits.log_bytes = to_usize(n);
    }
    if let Some(n) = size(cx, "output_limit", s.output_limit) {
        limits.output_bytes = to_usize(n);
    }
    if matches!(kind, StepKind::Approval(_)) {
        limits.timeout = DEFAULT_APPROVAL_TIMEOUT;
    }
    if let Some(t) = s.timeout {
        match parse_duration(&t.0) {
            Ok(d) if d.is_zero() => cx.err(
                &at("timeout"),
                format!("{what}`timeout` must be more than zero"),
            ),
            Ok(d) => limits.timeout = d,
            Err(e) => cx.err(&at("timeout"), format!("{what}{e}")),
        }
    }

    let retries = check_retries(cx, &at("retries"), &what, s.retries);

    Step {
        name: s.name.unwrap_or_else(|| id.clone()),
        id,
        kind,
        with,
        allow,
        needs,
        condition,
        limits,
        retries,
        continue_on_error: s.continue_on_error,
        idempotent: s.idempotent,
        location: cx.positions.find(path).unwrap_or_default(),
        key_locations: KeyLocations(cx.positions.under(path)),
    }
}

/// The plugin of a step whose `uses` is missing or wrong: the workflow is refused anyway, and
/// this keeps checking the rest of the step.
fn no_plugin() -> PluginRef {
    PluginRef::Name {
        name: String::new(),
        sha256: None,
    }
}

fn check_approval(
    cx: &mut Cx,
    path: &str,
    what: &str,
    raw: raw::RawApproval,
    rules: &RefRules,
) -> Approval {
    let message = template(cx, &format!("{path}.message"), what, &raw.message, rules)
        .unwrap_or_else(|| Template::parse("").expect("an empty template parses"));
    if raw.message.trim().is_empty() {
        cx.err(
            &format!("{path}.message"),
            format!("{what}the approval `message` is empty; say what the approvers decide"),
        );
    }
    let approvers = raw.approvers.unwrap_or_default();
    for (key, names) in [
        ("roles", &approvers.roles),
        ("principals", &approvers.principals),
    ] {
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                cx.err(
                    &format!("{path}.approvers.{key}[{i}]"),
                    format!("{what}an empty name in `approvers.{key}`"),
                );
            } else if key == "roles" && !crate::APPROVER_ROLES.contains(&name.as_str()) {
                // A role the daemon does not have would match nobody, and the step could only
                // time out.
                cx.err(
                    &format!("{path}.approvers.roles[{i}]"),
                    format!(
                        "{what}unknown role `{name}` in `approvers.roles`; the roles are {}{}",
                        crate::APPROVER_ROLES.map(|r| format!("`{r}`")).join(", "),
                        crate::did_you_mean(name, crate::APPROVER_ROLES)
                    ),
                );
            }
        }
    }
    let required = raw.required.unwrap_or(1);
    if required == 0 || required > MAX_REQUIRED_APPROVALS {
        cx.err(
            &format!("{path}.required"),
            format!(
                "{what}`required` is {required}; it must be between 1 and {MAX_REQUIRED_APPROVALS}"
            ),
        );
    } else if approvers.roles.is_empty()
        && !approvers.principals.is_empty()
        && (approvers.principals.len() as u64) < u64::from(required)
    {
        cx.err(
            &format!("{path}.required"),
            format!(
                "{what}`required` is {required} but `approvers` names only {} principal(s) and no role, so the step could never be approved",
                approvers.principals.len()
            ),
        );
    }
    Approval {
        message,
        roles: approvers.roles,
        principals: approvers.principals,
        required,
        allow_self: raw.allow_self,
    }
}

fn check_retries(cx: &mut Cx, path: &str, what: &str, raw: Option<raw::RawRetries>) -> Retries {
    let mut r = Retries::default();
    match raw {
        None => {}
        Some(raw::RawRetries::Count(n)) => r.count = n,
        Some(raw::RawRetries::Full(p)) => {
            r.count = p.count;
            if let Some(b) = p.backoff {
                let dur = |cx: &mut Cx,
                           key: &str,
                           v: Option<raw::Text>,
                           into: &mut std::time::Duration| {
                    if let Some(v) = v {
                        match parse_duration(&v.0) {
                            Ok(d) => *into = d,
                            Err(e) => {
                                cx.err(&format!("{path}.backoff.{key}"), format!("{what}{e}"))
                            }
                        }
                    }
                };
                dur(cx, "initial", b.initial, &mut r.initial);
                dur(cx, "max", b.max, &mut r.max);
                if let Some(f) = b.factor {
                    if f.is_finite() && f >= 1.0 {
                        r.factor = f;
                    } else {
                        cx.err(
                            &format!("{path}.backoff.factor"),
                            format!("{what}backoff `factor` `{f}` must be at least 1, so waits never shrink"),
                        );
                    }
                }
                if r.initial > r.max {
                    cx.err(
                        &format!("{path}.backoff"),
                        format!("{what}backoff `initial` is longer than `max`"),
                    );
                }
            }
        }
    }
    r
}

fn check_allow(
    cx: &mut Cx,
    step_path: &str,
    what: &str,
    raw: raw::RawAllow,
    rules: &RefRules,
    base_dir: &Path,
) -> Allow {
    let mut allow = Allow::default();
    // (path in the file, as written, host path) of every grant, to find overlaps.
    let mut all: Vec<(String, String, PathBuf)> = Vec::new();
    for (kind, list) in [("read", raw.read), ("write", raw.write)] {
        for (i, written) in list.into_iter().enumerate() {
            let path = format!("{step_path}.allow.{kind}[{i}]");
            match grants::grant(&written, base_dir) {
                Ok(g) => {
                    for (other_path, other_written, other_host) in &all {
                        if g.host_path.starts_with(other_host)
                            || other_host.starts_with(&g.host_path)
                        {
                            let label = |p: &str| {
                                p.rsplit_once(".allow.")
                                    .map_or(p.to_string(), |(_, r)| format!("allow.{r}"))
                            };
                            cx.err(
                                &path,
                                format!(
                                    "{what}grants `{other_written}` (`{}`) and `{written}` (`{}`) overlap; one is inside the other, so grant each directory once",
                                    label(other_path),
                                    label(&path)
                                ),
                            );
                        }
                    }
                    all.push((path, written, g.host_path.clone()));
                    let target: &mut Vec<Grant> = if kind == "read" {
                        &mut allow.read
                    } else {
                        &mut allow.write
                    };
                    target.push(g);
                }
                Err(e) => cx.err(&path, format!("{what}`allow.{kind}[{i}]`: {e}")),
            }
        }
    }
    for (i, h) in raw.http.iter().enumerate() {
        match HostPattern::parse(h) {
            Ok(p) => allow.http.push(p),
            Err(e) => cx.err(
                &format!("{step_path}.allow.http[{i}]"),
                format!("{what}{e}"),
            ),
        }
    }
    for (name, value) in in_file_order(cx, &format!("{step_path}.allow.env"), raw.env) {
        let path = format!("{step_path}.allow.env.{name}");
        if !is_var_name(&name) {
            cx.err(&path, format!("{what}invalid env name `{name}`; expected letters, digits and `_`, not starting with a digit"));
        }
        if let Some(t) = template(
            cx,
            &path,
            &format!("{what}`allow.env.{name}`: "),
            &value,
            rules,
        ) {
            allow.env.push((name, t));
        }
    }
    for (i, name) in raw.secrets.into_iter().enumerate() {
        if !is_var_name(&name) {
            cx.err(
                &format!("{step_path}.allow.secrets[{i}]"),
                format!("{what}invalid secret name `{name}`; expected letters, digits and `_`"),
            );
        }
        allow.secrets.push(name);
    }
    allow
}

fn config_value(
    cx: &mut Cx,
    path: &str,
    what: &str,
    v: serde_yaml::Value,
    rules: &RefRules,
) -> ConfigValue {
    use serde_yaml::Value as Y;
    let shown = path
        .split_once(".with")
        .map_or("with".to_string(), |(_, r)| format!("with{r}"));
    match v {
        Y::Null => ConfigValue::Null,
        Y::Bool(b) => ConfigValue::Bool(b),
        Y::Number(n) => {
            let json = if let Some(i) = n.as_i64() {
                Some(serde_json::Number::from(i))
            } else if let Some(u) = n.as_u64() {
                Some(serde_json::Number::from(u))
            } else {
                n.as_f64().and_then(serde_json::Number::from_f64)
            };
            match json {
                Some(j) => ConfigValue::Number(j),
                None => {
                    cx.err(path, format!("{what}`{shown}`: `{n}` is not a JSON number"));
                    ConfigValue::Null
                }
            }
        }
        Y::String(s) => template(cx, path, &format!("{what}`{shown}`: "), &s, rules)
            .map_or(ConfigValue::Null, ConfigValue::String),
        Y::Sequence(items) => ConfigValue::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| config_value(cx, &format!("{path}[{i}]"), what, item, rules))
                .collect(),
        ),
        Y::Mapping(m) => {
            let mut entries = Vec::new();
            for (k, v) in m {
                let key = match k {
                    Y::String(s) => s,
                    Y::Number(n) => n.to_string(),
                    Y::Bool(b) => b.to_string(),
                    _ => {
                        cx.err(path, format!("{what}`{shown}`: keys must be strings"));
                        continue;
                    }
                };
                let child = config_value(cx, &format!("{path}.{key}"), what, v, rules);
                entries.push((key, child));
            }
            ConfigValue::Object(entries)
        }
        Y::Tagged(t) => {
            cx.err(
                path,
                format!(
                    "{what}`{shown}`: YAML tags such as `{}` are not supported",
                    t.tag
                ),
            );
            ConfigValue::Null
        }
    }
}

/// Parses `uses:`: a plugin name or a path to a component, optionally `@sha256:<64 hex>`, or an
/// OCI reference.
fn parse_uses(text: &str, base_dir: &Path) -> Result<PluginRef, String> {
    if text.starts_with(crate::OCI_SCHEME) {
        return crate::OciRef::parse(text).map(PluginRef::Oci);
    }
    // An `@` followed by a `/` belongs to a directory name, not to a pin.
    let (target, sha256) = match text.rsplit_once('@').filter(|(_, pin)| !pin.contains('/')) {
        Some((target, pin)) => {
            let Some(hex_digits) = pin.strip_prefix("sha256:") else {
                return Err(format!(
                    "invalid pin `@{pin}` in `uses`; expected `@sha256:` followed by 64 hex digits"
                ));
            };
            let mut digest = [0u8; 32];
            if hex_digits.len() != 64 || hex::decode_to_slice(hex_digits, &mut digest).is_err() {
                return Err(format!(
                    "invalid sha256 `{hex_digits}`; expected 64 hex digits"
                ));
            }
            (target, Some(digest))
        }
        None => (text, None),
    };
    if target.is_empty() {
        return Err("`uses` is empty; name a plugin or a `.wasm` path".into());
    }
    if target.starts_with('.') || target.starts_with('/') || target.ends_with(".wasm") {
        return Ok(PluginRef::Path {
            path: grants::normalize(&base_dir.join(target)),
            sha256,
        });
    }
    if !is_id(target) {
        // `ghcr.io/acme/notify:1` is a registry reference without its scheme, and
        // `docker://ghcr.io/acme/notify:1` one with GitHub Actions' scheme for a container
        // image.
        let (scheme, rest) = text.split_once("://").unwrap_or(("", text));
        let oci = format!("{}{rest}", crate::OCI_SCHEME);
        let hint = match scheme {
            _ if !rest.contains('/') || crate::OciRef::parse(&oci).is_err() => String::new(),
            "docker" => format!(
                "; `docker://` names a container image, as in GitHub Actions, and a plugin is a Wasm component: one pushed with `shiphat plugin push` is `{oci}`"
            ),
            _ => format!("; did you mean `{oci}`?"),
        };
        return Err(format!(
            "invalid plugin name `{target}`; expected lowercase letters, digits, `-` and `_`, a path to a `.wasm` file, or `oci://REGISTRY/REPOSITORY:TAG`{hint}"
        ));
    }
    Ok(PluginRef::Name {
        name: target.to_string(),
        sha256,
    })
}
