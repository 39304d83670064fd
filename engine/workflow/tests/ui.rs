//! Every `ui/*.yaml` is checked; the result must match `*.stderr` (the error text) or `*.ok` (a
//! summary of the plan). Run with `BLESS=1` to rewrite the expectations after a deliberate change.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use shiphat_workflow::{ConfigValue, PluginRef, Step, StepKind, Workflow, parse};

fn config(v: &ConfigValue) -> String {
    match v {
        ConfigValue::Null => "null".into(),
        ConfigValue::Bool(b) => b.to_string(),
        ConfigValue::Number(n) => n.to_string(),
        ConfigValue::String(t) if t.is_literal() => format!("{:?}", t.source()),
        ConfigValue::String(t) => format!("template({:?})", t.source()),
        ConfigValue::Array(items) => format!(
            "[{}]",
            items.iter().map(config).collect::<Vec<_>>().join(", ")
        ),
        ConfigValue::Object(entries) => format!(
            "{{{}}}",
            entries
                .iter()
                .map(|(k, v)| format!("{k}: {}", config(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn step(out: &mut String, section: &[Step], s: &Step) {
    let uses = match &s.kind {
        StepKind::Plugin(PluginRef::Name { name, sha256 }) => {
            format!("name {name} pinned={}", sha256.is_some())
        }
        StepKind::Plugin(PluginRef::Path { path, sha256 }) => {
            format!("path {} pinned={}", path.display(), sha256.is_some())
        }
        StepKind::Plugin(PluginRef::Oci(r)) => format!("oci {r} short_name={}", r.short_name()),
        StepKind::Approval(a) => format!(
            "approval message={:?} roles={:?} principals={:?} required={} allow_self={}",
            a.message.source(),
            a.roles,
            a.principals,
            a.required,
            a.allow_self
        ),
    };
    let needs: Vec<&str> = s.needs.iter().map(|&i| section[i].id.as_str()).collect();
    writeln!(
        out,
        "  - {} ({:?}) at {}:{}",
        s.id, s.name, s.location.line, s.location.column
    )
    .unwrap();
    writeln!(out, "    uses: {uses}").unwrap();
    if !needs.is_empty() {
        writeln!(out, "    needs: {needs:?}").unwrap();
    }
    if let Some(c) = &s.condition {
        writeln!(out, "    if: {c}").unwrap();
    }
    writeln!(out, "    with: {}", config(&s.with)).unwrap();
    let a = &s.allow;
    for g in &a.read {
        writeln!(
            out,
            "    read: {} as {:?}",
            g.host_path.display(),
            g.guest_path
        )
        .unwrap();
    }
    for g in &a.write {
        writeln!(
            out,
            "    write: {} as {:?}",
            g.host_path.display(),
            g.guest_path
        )
        .unwrap();
    }
    for h in &a.http {
        writeln!(out, "    http: {h}").unwrap();
    }
    for (k, t) in &a.env {
        writeln!(out, "    env: {k}={:?}", t.source()).unwrap();
    }
    if !a.secrets.is_empty() {
        writeln!(out, "    secrets: {:?}", a.secrets).unwrap();
    }
    writeln!(out, "    limits: {:?}", s.limits).unwrap();
    writeln!(out, "    retries: {:?}", s.retries).unwrap();
    writeln!(
        out,
        "    continue_on_error: {} idempotent: {}",
        s.continue_on_error, s.idempotent
    )
    .unwrap();
}

fn summary(w: &Workflow) -> String {
    let mut out = String::new();
    writeln!(out, "name: {:?}", w.name).unwrap();
    if let Some(d) = &w.description {
        writeln!(out, "description: {d:?}").unwrap();
    }
    for i in &w.inputs {
        writeln!(
            out,
            "input {}: {:?} default={:?} required={}",
            i.name, i.kind, i.default, i.required
        )
        .unwrap();
    }
    for (k, t) in &w.env {
        writeln!(out, "env {k}={:?}", t.source()).unwrap();
    }
    if let Some(c) = &w.concurrency {
        writeln!(out, "concurrency: {:?} queue={}", c.key.source(), c.queue).unwrap();
    }
    writeln!(out, "resume: {:?}", w.resume).unwrap();
    writeln!(out, "outside_window: {:?}", w.outside_window).unwrap();
    for (name, section) in [
        ("steps", &w.steps),
        ("on_failure", &w.on_failure),
        ("finally", &w.finally),
    ] {
        if section.is_empty() {
            continue;
        }
        writeln!(out, "{name}:").unwrap();
        for s in section {
            step(&mut out, section, s);
        }
    }
    out
}

#[test]
fn ui() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ui");
    let bless = std::env::var_os("BLESS").is_some();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no ui tests found in {}", dir.display());
    let mut failures = Vec::new();
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = Path::new(path.file_name().unwrap());
        let (actual, ext, other) = match parse(&text, name) {
            Ok(w) => {
                // Paths outside the workflow's directory are absolute; keep the expectations
                // independent of where the repository is checked out.
                let base = w.base_dir.display().to_string();
                let up = w.base_dir.parent().unwrap().display().to_string();
                let mut s = summary(&w).replace(&base, "<base>");
                if up.len() > 1 {
                    s = s.replace(&up, "<base>/..");
                }
                (s, "ok", "stderr")
            }
            Err(e) => (format!("{e}\n"), "stderr", "ok"),
        };
        let expected_path = path.with_extension(ext);
        let other_path = path.with_extension(other);
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            let _ = std::fs::remove_file(&other_path);
            continue;
        }
        match std::fs::read_to_string(&expected_path) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{}: expected\n{expected}\ngot\n{actual}",
                name.display()
            )),
            Err(_) => failures.push(format!(
                "{}: no {} file (expected outcome changed?); got\n{actual}",
                name.display(),
                expected_path.file_name().unwrap().to_string_lossy()
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} ui tests differ (rerun with BLESS=1 to accept):\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}
