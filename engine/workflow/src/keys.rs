//! Unknown-key detection on the pre-pass tree. serde's `deny_unknown_fields` stops at the first
//! unknown key and has no suggestion; walking the tree finds them all, with positions, first.

use crate::Location;
use crate::prepass::{Kind, Node};

pub(crate) const WORKFLOW_KEYS: &[&str] = &[
    "name",
    "description",
    "inputs",
    "env",
    "concurrency",
    "resume",
    "outside_window",
    "steps",
    "on_failure",
    "finally",
];
pub(crate) const INPUT_KEYS: &[&str] = &["type", "description", "default", "required", "choices"];
pub(crate) const CONCURRENCY_KEYS: &[&str] = &["key", "queue"];
pub(crate) const STEP_KEYS: &[&str] = &[
    "id",
    "name",
    "uses",
    "approval",
    "with",
    "allow",
    "needs",
    "if",
    "timeout",
    "memory",
    "stack",
    "log_limit",
    "output_limit",
    "retries",
    "continue_on_error",
    "idempotent",
];
pub(crate) const ALLOW_KEYS: &[&str] = &["read", "write", "http", "env", "secrets"];
pub(crate) const APPROVAL_KEYS: &[&str] = &["message", "approvers", "required", "allow_self"];
pub(crate) const APPROVERS_KEYS: &[&str] = &["roles", "principals"];
pub(crate) const RETRY_KEYS: &[&str] = &["count", "backoff"];
pub(crate) const BACKOFF_KEYS: &[&str] = &["initial", "factor", "max"];

#[derive(Clone, Copy)]
enum Shape {
    Workflow,
    Input,
    Concurrency,
    Step,
    Allow,
    Approval,
    Approvers,
    Retries,
    Backoff,
}

impl Shape {
    fn keys(self) -> &'static [&'static str] {
        match self {
            Shape::Workflow => WORKFLOW_KEYS,
            Shape::Input => INPUT_KEYS,
            Shape::Concurrency => CONCURRENCY_KEYS,
            Shape::Step => STEP_KEYS,
            Shape::Allow => ALLOW_KEYS,
            Shape::Approval => APPROVAL_KEYS,
            Shape::Approvers => APPROVERS_KEYS,
            Shape::Retries => RETRY_KEYS,
            Shape::Backoff => BACKOFF_KEYS,
        }
    }
}

/// Every unknown key in the document, as (position, message).
pub(crate) fn unknown_keys(root: &Node) -> Vec<(Location, String)> {
    let mut out = Vec::new();
    walk(root, Shape::Workflow, &mut out);
    out
}

fn walk(node: &Node, shape: Shape, out: &mut Vec<(Location, String)>) {
    // Wrong shapes (a list where a mapping belongs) are left to serde, which words them well.
    let Kind::Map(entries) = &node.kind else {
        return;
    };
    let known = shape.keys();
    for (key, at, value) in entries {
        if !known.contains(&key.as_str()) {
            let hint = match crate::suggest(key, known.iter().copied()) {
                Some(s) => format!("; did you mean `{s}`?"),
                None => format!(
                    "; expected one of {}",
                    known
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            out.push((*at, format!("unknown key `{key}`{hint}")));
            continue;
        }
        let child = match (shape, key.as_str()) {
            (Shape::Workflow, "inputs") => {
                if let Kind::Map(inputs) = &value.kind {
                    for (_, _, input) in inputs {
                        walk(input, Shape::Input, out);
                    }
                }
                None
            }
            (Shape::Workflow, "concurrency") => Some(Shape::Concurrency),
            (Shape::Workflow, "steps" | "on_failure" | "finally") => {
                if let Kind::Seq(steps) = &value.kind {
                    for step in steps {
                        walk(step, Shape::Step, out);
                    }
                }
                None
            }
            (Shape::Step, "allow") => Some(Shape::Allow),
            (Shape::Step, "retries") => Some(Shape::Retries),
            (Shape::Step, "approval") => Some(Shape::Approval),
            (Shape::Approval, "approvers") => Some(Shape::Approvers),
            (Shape::Retries, "backoff") => Some(Shape::Backoff),
            _ => None,
        };
        if let Some(child) = child {
            walk(value, child, out);
        }
    }
}
