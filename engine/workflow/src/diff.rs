//! What a change to a workflow file changes in what its steps may reach: the read and write
//! directories, hosts, variables and secrets each step is granted, and the plugin it runs. A
//! widened grant is what a second reviewer should look at (`shiphat validate --against`, and
//! the daemon's audit log when it reloads a changed file).

use std::collections::BTreeSet;
use std::fmt;

use crate::{PluginRef, Step, StepKind, Workflow};

/// The grant changes between two versions of a workflow, step by step, in the new file's
/// order (removed steps last).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantDiff {
    pub steps: Vec<StepDiff>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDiff {
    pub step: String,
    pub change: StepChange,
    /// `read `x``, `write `x``, `http `h``, `env `K``, `secret `S``.
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// The plugin reference before and after, when it changed (pins and digests included).
    pub plugin: Option<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepChange {
    Added,
    Removed,
    Changed,
}

impl GrantDiff {
    /// Whether any step may now reach something it could not before, or runs another plugin:
    /// a new grant, a new step with grants, or a plugin swapped.
    pub fn widened(&self) -> bool {
        self.steps
            .iter()
            .any(|s| !s.added.is_empty() || (s.plugin.is_some() && s.change == StepChange::Changed))
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// The grants of a step, as the lines a diff shows: `read `x``, `write `x``, `http `h``,
/// `env `K``, `secret `S``.
pub fn grant_lines(step: &Step) -> BTreeSet<String> {
    let a = &step.allow;
    let mut out = BTreeSet::new();
    out.extend(a.read.iter().map(|g| format!("read `{}`", g.guest_path)));
    out.extend(a.write.iter().map(|g| format!("write `{}`", g.guest_path)));
    out.extend(a.http.iter().map(|h| format!("http `{h}`")));
    out.extend(a.env.iter().map(|(k, _)| format!("env `{k}`")));
    out.extend(a.secrets.iter().map(|s| format!("secret `{s}`")));
    out
}

/// A step's plugin as written: the name, path or OCI reference with its pin.
pub fn plugin_text(step: &Step) -> Option<String> {
    let pin = |sha: &Option<[u8; 32]>| {
        sha.map(|d| format!("@sha256:{}", hex::encode(d)))
            .unwrap_or_default()
    };
    match &step.kind {
        StepKind::Plugin(PluginRef::Name { name, sha256 }) => {
            Some(format!("{name}{}", pin(sha256)))
        }
        StepKind::Plugin(PluginRef::Path { path, sha256 }) => {
            Some(format!("{}{}", path.display(), pin(sha256)))
        }
        StepKind::Plugin(PluginRef::Oci(r)) => Some(r.to_string()),
        StepKind::Approval(_) => None,
    }
}

/// The grant changes from `old` to `new`. Steps are matched by id.
pub fn grant_diff(old: &Workflow, new: &Workflow) -> GrantDiff {
    let mut steps = Vec::new();
    for step in new.all_steps() {
        let after = grant_lines(step);
        match old.step(&step.id) {
            None => {
                if !after.is_empty() || plugin_text(step).is_some() {
                    steps.push(StepDiff {
                        step: step.id.clone(),
                        change: StepChange::Added,
                        added: after.into_iter().collect(),
                        removed: Vec::new(),
                        plugin: plugin_text(step).map(|p| (String::new(), p)),
                    });
                }
            }
            Some(before_step) => {
                let before = grant_lines(before_step);
                let added: Vec<String> = after.difference(&before).cloned().collect();
                let removed: Vec<String> = before.difference(&after).cloned().collect();
                let (was, is) = (plugin_text(before_step), plugin_text(step));
                let plugin = (was != is).then(|| (was.unwrap_or_default(), is.unwrap_or_default()));
                if !added.is_empty() || !removed.is_empty() || plugin.is_some() {
                    steps.push(StepDiff {
                        step: step.id.clone(),
                        change: StepChange::Changed,
                        added,
                        removed,
                        plugin,
                    });
                }
            }
        }
    }
    for step in old.all_steps().filter(|s| new.step(&s.id).is_none()) {
        let before = grant_lines(step);
        steps.push(StepDiff {
            step: step.id.clone(),
            change: StepChange::Removed,
            added: Vec::new(),
            removed: before.into_iter().collect(),
            plugin: None,
        });
    }
    GrantDiff { steps }
}

impl fmt::Display for GrantDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steps.is_empty() {
            return writeln!(f, "grants unchanged");
        }
        for s in &self.steps {
            let what = match s.change {
                StepChange::Added => " (new step)",
                StepChange::Removed => " (removed)",
                StepChange::Changed => "",
            };
            writeln!(f, "step `{}`{what}:", s.step)?;
            if let Some((was, is)) = &s.plugin {
                match s.change {
                    StepChange::Added => writeln!(f, "  plugin `{is}`")?,
                    _ => writeln!(f, "  plugin `{was}` → `{is}`")?,
                }
            }
            for a in &s.added {
                writeln!(f, "  + {a}")?;
            }
            for r in &s.removed {
                writeln!(f, "  - {r}")?;
            }
        }
        if self.widened() {
            writeln!(f, "grants widened: a second review is due")
        } else {
            writeln!(f, "grants narrowed only")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(yaml: &str) -> Workflow {
        crate::parse(yaml, Path::new("/w/deploy.yaml")).unwrap()
    }

    const OLD: &str = "name: d\nsteps:\n  - id: deploy\n    uses: deployer\n    allow: { read: [build], write: [www] }\n  - id: gone\n    uses: echo\n    allow: { secrets: [OLD] }\n";

    #[test]
    fn a_widened_grant_is_told_apart_from_a_narrowed_one() {
        let old = parse(OLD);
        assert!(grant_diff(&old, &old).is_empty());
        assert_eq!(grant_diff(&old, &old).to_string(), "grants unchanged\n");

        let narrower = parse(
            "name: d\nsteps:\n  - id: deploy\n    uses: deployer\n    allow: { write: [www] }\n",
        );
        let d = grant_diff(&old, &narrower);
        assert!(!d.widened(), "{d}");
        assert_eq!(
            d.to_string(),
            "step `deploy`:\n  - read `build`\nstep `gone` (removed):\n  - secret `OLD`\ngrants narrowed only\n"
        );

        let wider = parse(
            "name: d\nsteps:\n  - id: deploy\n    uses: deployer\n    allow: { read: [build], write: [www, /etc], http: [hooks.example.com] }\n  - id: gone\n    uses: echo\n    allow: { secrets: [OLD, NEW] }\n  - id: notify\n    uses: echo\n    allow: { env: { A: b } }\n",
        );
        let d = grant_diff(&old, &wider);
        assert!(d.widened(), "{d}");
        let text = d.to_string();
        assert!(
            text.contains("step `deploy`:\n  + http `hooks.example.com`\n  + write `/etc`\n"),
            "{text}"
        );
        assert!(text.contains("step `gone`:\n  + secret `NEW`\n"), "{text}");
        assert!(
            text.contains("step `notify` (new step):\n  plugin `echo`\n  + env `A`\n"),
            "{text}"
        );
        assert!(
            text.ends_with("grants widened: a second review is due\n"),
            "{text}"
        );
    }

    #[test]
    fn a_swapped_plugin_widens_even_with_the_same_grants() {
        let old = parse(OLD);
        let swapped = parse(&OLD.replace("uses: deployer", "uses: ./evil.wasm"));
        let d = grant_diff(&old, &swapped);
        assert!(d.widened());
        assert!(
            d.to_string().contains("plugin `deployer` → `/w/evil.wasm`"),
            "{d}"
        );
    }
}
