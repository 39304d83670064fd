//! The handbook of a workflow, in Markdown, for someone who has never seen its YAML: what it is
//! for, its inputs, each step in words (from the plugin's own description and its `with:`),
//! what each step may touch, what makes it fail and what happens then. `shiphat explain`
//! prints it; the daemon serves it. It is built from the checked workflow and what each
//! plugin's `describe()` said, and from nothing else, so it cannot disagree with what runs.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;
use shiphat_workflow::{
    ConfigValue, InputKind, OutsideWindow, PluginRef, Resume, Step, StepKind, Workflow,
};

use crate::{PluginInfo, Prepared};

/// Keys of a `with:` block (at any depth) that decide whether a step fails: a QA rule, a
/// metric's conditions and limits. Matched by name, since every plugin names its own.
const FAILURE_KEYS: [&str; 6] = ["condition", "limit", "max_", "min_", "threshold", "fail"];

/// The handbook of a prepared workflow, as `shiphat explain` prints it: who may run it is
/// left to the daemon.
pub fn handbook(prepared: &Prepared) -> String {
    write(prepared, None)
}

/// The handbook as a daemon serves it: `who_and_when`, lines of a Markdown list the daemon
/// writes from what only it knows (its principals, its deploy windows), stand where
/// [`handbook`] says that who may run it is the daemon's.
pub fn handbook_for(prepared: &Prepared, who_and_when: &[String]) -> String {
    write(prepared, Some(who_and_when))
}

fn write(prepared: &Prepared, who_and_when: Option<&[String]>) -> String {
    let w = &prepared.workflow;
    let info = |step: &Step| -> Option<&PluginInfo> {
        prepared
            .plugins()
            .find(|(s, _, _)| s.id == step.id)
            .map(|(_, _, info)| info)
    };
    let mut out = String::new();
    let _ = writeln!(out, "# {}\n", w.name);
    match &w.description {
        Some(d) => {
            let _ = writeln!(out, "{}\n", d.trim());
        }
        None => out.push_str("(The workflow has no `description`.)\n\n"),
    }
    inputs(&mut out, w);

    out.push_str("## What it does\n\n");
    steps(&mut out, w, &w.steps, &info);

    out.push_str("## What makes it fail\n\n");
    failures(&mut out, w, &info);

    out.push_str("## What happens then\n\n");
    if w.on_failure.is_empty() {
        out.push_str(
            "Nothing is undone: the workflow has no `on_failure` steps. What the steps changed before the failure stays as it is.\n\n",
        );
    } else {
        out.push_str("When a step fails (or the run is cancelled), these run:\n\n");
        steps(&mut out, w, &w.on_failure, &info);
    }
    if !w.finally.is_empty() {
        out.push_str("Whatever happened, these run last:\n\n");
        steps(&mut out, w, &w.finally, &info);
    }

    out.push_str("## Where and when it runs\n\n");
    match &w.concurrency {
        Some(c) if c.queue => {
            let _ = writeln!(
                out,
                "- One run at a time per key `{}`: a run started while another holds the key waits its turn.",
                c.key.source()
            );
        }
        Some(c) => {
            let _ = writeln!(
                out,
                "- One run at a time per key `{}`: a run started while another holds the key is refused.",
                c.key.source()
            );
        }
        None => out.push_str("- Runs may overlap: the workflow sets no `concurrency` key.\n"),
    }
    out.push_str(match w.resume {
        Resume::Auto => "- After a daemon crash, an interrupted run resumes by itself when its step in flight is `idempotent`.\n",
        Resume::Manual => "- After a daemon crash, an interrupted run waits for a person to resume it.\n",
    });
    out.push_str(match w.outside_window {
        OutsideWindow::Refuse => "- Outside its deploy window (the daemon's `[[windows]]` and `[[freezes]]`), a run is refused.\n",
        OutsideWindow::Wait => "- Outside its deploy window (the daemon's `[[windows]]` and `[[freezes]]`), a run waits for it to open.\n",
    });
    match who_and_when {
        None => out.push_str("- Who may run it is the daemon's: principals with the `deployer` role whose patterns name it.\n"),
        Some(lines) => {
            for line in lines {
                let _ = writeln!(out, "- {line}");
            }
        }
    }
    out
}

fn inputs(out: &mut String, w: &Workflow) {
    if w.inputs.is_empty() {
        out.push_str("It takes no inputs.\n\n");
        return;
    }
    out.push_str("## Inputs\n\n| input | meaning | kind | default |\n|---|---|---|---|\n");
    for input in &w.inputs {
        let kind = match &input.kind {
            InputKind::String => "text".to_owned(),
            InputKind::Number => "number".to_owned(),
            InputKind::Bool => "true or false".to_owned(),
            InputKind::Choice(options) => format!(
                "one of {}",
                options
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let kind = if input.required {
            format!("{kind}, required")
        } else {
            kind
        };
        let default = input
            .default
            .as_ref()
            .map(|d| format!("`{}`", plain(d)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "| `{}` | {} | {kind} | {default} |",
            input.name,
            cell(input.description.as_deref().unwrap_or(""))
        );
    }
    out.push('\n');
}

/// A JSON value as a reader would write it: a string without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Text for a Markdown table cell: one line, `|` escaped.
fn cell(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn steps<'p>(
    out: &mut String,
    w: &Workflow,
    section: &[Step],
    info: &dyn Fn(&Step) -> Option<&'p PluginInfo>,
) {
    for (n, step) in section.iter().enumerate() {
        let title = if step.name == step.id {
            format!("`{}`", step.id)
        } else {
            format!("{} (`{}`)", step.name, step.id)
        };
        let _ = write!(out, "{}. **{title}**", n + 1);
        if !step.needs.is_empty() {
            let after: Vec<String> = step
                .needs
                .iter()
                .map(|&i| format!("`{}`", section[i].id))
                .collect();
            let _ = write!(out, ", after {}", after.join(" and "));
        }
        if let Some(condition) = &step.condition {
            let _ = write!(out, ", only when `{}`", condition.source());
        }
        out.push_str(": ");
        match &step.kind {
            StepKind::Approval(a) => {
                let who = approvers(&a.roles, &a.principals);
                let four_eyes = if a.allow_self {
                    ""
                } else {
                    " (not the person who started the run)"
                };
                let _ = writeln!(
                    out,
                    "asks {who}{four_eyes} to approve:\n\n   > {}\n\n   {} needed; one rejection rejects. No decision within {} counts as a rejection.\n",
                    a.message
                        .source()
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" "),
                    if a.required == 1 {
                        "One approval is".to_owned()
                    } else {
                        format!("{} approvals are", a.required)
                    },
                    human(step.limits.timeout)
                );
            }
            StepKind::Plugin(uses) => {
                let plugin = match uses {
                    PluginRef::Name { name, .. } => format!("`{name}`"),
                    PluginRef::Path { path, .. } => format!(
                        "`{}`",
                        path.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    PluginRef::Oci(r) => format!("`{}`", r.unpinned()),
                };
                let (what, schema) = match info(step) {
                    Some(i) => (
                        if plugin == format!("`{}`", i.name) {
                            format!("{} (plugin {plugin} {})", i.description.trim(), i.version)
                        } else {
                            format!(
                                "{} (plugin {plugin}: {} {})",
                                i.description.trim(),
                                i.name,
                                i.version
                            )
                        },
                        serde_json::from_str::<Value>(&i.config_schema).unwrap_or_default(),
                    ),
                    None => (format!("runs the plugin {plugin}"), Value::Null),
                };
                let _ = writeln!(out, "{what}");
                with(out, &step.with, &schema, "   - ");
                touches(out, w, step);
                let retries = match step.retries.count {
                    0 => "tried once".to_owned(),
                    n => format!("tried up to {} times", n + 1),
                };
                let _ = writeln!(
                    out,
                    "   - Gives up after {}; {retries}{}.",
                    human(step.limits.timeout),
                    if step.continue_on_error {
                        "; a failure here does not fail the run"
                    } else {
                        ""
                    }
                );
                out.push('\n');
            }
        }
    }
}

/// Each `with:` key, its value, and what the plugin's schema says it means.
fn with(out: &mut String, config: &ConfigValue, schema: &Value, indent: &str) {
    let ConfigValue::Object(entries) = config else {
        return;
    };
    for (key, value) in entries {
        let meaning = schema["properties"][key]["description"]
            .as_str()
            .map(|d| format!(": {}", d.split_whitespace().collect::<Vec<_>>().join(" ")))
            .unwrap_or_default();
        match value {
            ConfigValue::Array(items)
                if items.iter().any(|i| matches!(i, ConfigValue::Object(_))) =>
            {
                let _ = writeln!(out, "{indent}`{key}`{meaning}");
                let item_schema = &schema["properties"][key]["items"];
                let deeper = format!("  {indent}");
                for (n, item) in items.iter().enumerate() {
                    if items.len() > 1 {
                        let _ = writeln!(out, "{deeper}{key} #{}:", n + 1);
                        with(out, item, item_schema, &format!("  {deeper}"));
                    } else {
                        with(out, item, item_schema, &deeper);
                    }
                }
            }
            ConfigValue::Object(_) => {
                let _ = writeln!(out, "{indent}`{key}`{meaning}");
                let deeper = format!("  {indent}");
                with(out, value, &schema["properties"][key], &deeper);
            }
            _ => {
                let _ = writeln!(out, "{indent}`{key}` = `{}`{meaning}", short(value));
            }
        }
    }
}

/// A value as written in the file, on one line.
fn short(value: &ConfigValue) -> String {
    match value {
        ConfigValue::Null => "null".into(),
        ConfigValue::Bool(b) => b.to_string(),
        ConfigValue::Number(n) => n.to_string(),
        ConfigValue::String(t) => t.source().to_owned(),
        ConfigValue::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(short).collect::<Vec<_>>().join(", ")
            )
        }
        ConfigValue::Object(entries) => entries
            .iter()
            .filter_map(|(k, v)| match v {
                ConfigValue::Object(_) | ConfigValue::Array(_) => None,
                v => Some(format!("{k}: {}", short(v))),
            })
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// What a step may touch, in words; anything broad is flagged.
fn touches(out: &mut String, w: &Workflow, step: &Step) {
    let a = &step.allow;
    let mut lines = Vec::new();
    for g in &a.read {
        lines.push(format!(
            "reads `{}`{}",
            g.guest_path,
            broad_path(w, &g.host_path)
        ));
    }
    for g in &a.write {
        lines.push(format!(
            "changes files in `{}`{}",
            g.guest_path,
            broad_path(w, &g.host_path)
        ));
    }
    for h in &a.http {
        let text = h.to_string();
        let mut flags = Vec::new();
        if let Some(domain) = text.strip_prefix("*.") {
            let domain = domain.split(':').next().unwrap_or(domain);
            flags.push(format!("⚠ every host under `{domain}`"));
        }
        if text.ends_with(":*") {
            flags.push("any port".to_owned());
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!(" ({})", flags.join(", "))
        };
        lines.push(format!("talks to `{text}`{flags}"));
    }
    for (name, _) in &a.env {
        lines.push(format!("sees the variable `{name}`"));
    }
    for name in &a.secrets {
        lines.push(format!("may read the secret `{name}`"));
    }
    if lines.is_empty() {
        out.push_str("   - May touch nothing outside itself: no files, no network, no secrets.\n");
    } else {
        let _ = writeln!(out, "   - May touch: {}.", lines.join("; "));
    }
}

fn broad_path(w: &Workflow, host: &std::path::Path) -> &'static str {
    if host == std::path::Path::new("/") {
        " (⚠ the whole file system)"
    } else if !host.starts_with(&w.base_dir) {
        " (outside the workflow's directory)"
    } else {
        ""
    }
}

fn failures<'p>(out: &mut String, w: &Workflow, info: &dyn Fn(&Step) -> Option<&'p PluginInfo>) {
    out.push_str("A step that fails fails the run, unless it says `continue_on_error`. The rules each step checks:\n\n");
    for step in &w.steps {
        match &step.kind {
            StepKind::Approval(_) => {
                let _ = writeln!(
                    out,
                    "- `{}`: a rejection, or no decision within {}.",
                    step.id,
                    human(step.limits.timeout)
                );
            }
            StepKind::Plugin(_) => {
                let mut rules = Vec::new();
                rule_keys(&step.with, "", &mut rules);
                let name =
                    info(step).map_or_else(|| "its plugin".to_owned(), |i| format!("`{}`", i.name));
                let rules = if rules.is_empty() {
                    format!("whatever {name} reports as a failure")
                } else {
                    rules.join(", ")
                };
                let _ = writeln!(
                    out,
                    "- `{}`: {rules}; or taking longer than {}.",
                    step.id,
                    human(step.limits.timeout)
                );
            }
        }
    }
    out.push('\n');
}

/// `with:` entries, at any depth, whose key names a failure rule.
fn rule_keys(config: &ConfigValue, path: &str, rules: &mut Vec<String>) {
    match config {
        ConfigValue::Object(entries) => {
            let named = entries.iter().find_map(|(k, v)| match (k.as_str(), v) {
                ("name", ConfigValue::String(t)) => Some(t.source().to_owned()),
                _ => None,
            });
            for (key, value) in entries {
                let here = match (&named, path.is_empty()) {
                    (Some(n), _) => format!("{n}: {key}"),
                    (None, true) => key.clone(),
                    (None, false) => format!("{path}.{key}"),
                };
                if FAILURE_KEYS.iter().any(|f| key.contains(f))
                    && !matches!(value, ConfigValue::Object(_) | ConfigValue::Array(_))
                {
                    rules.push(format!("`{here}` = `{}`", short(value)));
                } else {
                    rule_keys(value, &here, rules);
                }
            }
        }
        ConfigValue::Array(items) => {
            for item in items {
                rule_keys(item, path, rules);
            }
        }
        _ => {}
    }
}

fn approvers(roles: &[String], principals: &[String]) -> String {
    let mut who = Vec::new();
    if !roles.is_empty() {
        who.push(format!(
            "anyone with the role {}",
            roles
                .iter()
                .map(|r| format!("`{r}`"))
                .collect::<Vec<_>>()
                .join(" or ")
        ));
    }
    if !principals.is_empty() {
        who.push(
            principals
                .iter()
                .map(|p| format!("`{p}`"))
                .collect::<Vec<_>>()
                .join(" or "),
        );
    }
    if who.is_empty() {
        "anyone who may run the workflow".to_owned()
    } else {
        who.join(" or ")
    }
}

/// `10m`, `1h 30m`, `45s`.
fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}
