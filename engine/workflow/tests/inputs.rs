//! Turning typed-in input text into values, and evaluating `env:`.

use std::path::Path;

use serde_json::json;
use shiphat_workflow::{Workflow, parse};

fn workflow() -> Workflow {
    let text = "\
name: inputs
inputs:
  version: { type: string, required: true }
  target: { type: choice, choices: [staging, production], default: staging }
  keep: { type: number, default: 5 }
  dry_run: { type: bool }
  note: { type: string }
env:
  TAG: v${{ inputs.version }}-${{ run.id }}
  KEEP: ${{ inputs.keep }}
steps:
  - id: a
    uses: echo
";
    parse(text, Path::new("inputs.yaml")).unwrap()
}

fn given(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn defaults_and_parsing() {
    let w = workflow();
    let got = w
        .resolve_inputs(&given(&[
            ("version", "1.2"),
            ("dry_run", "true"),
            ("keep", "2.5"),
        ]))
        .unwrap();
    assert_eq!(
        serde_json::Value::Object(got),
        json!({"version": "1.2", "target": "staging", "keep": 2.5, "dry_run": true, "note": null})
    );
}

#[test]
fn every_problem_is_reported() {
    let w = workflow();
    let errors = w
        .resolve_inputs(&given(&[
            ("verison", "1"),
            ("target", "prod"),
            ("keep", "many"),
            ("dry_run", "yes"),
        ]))
        .unwrap_err();
    assert_eq!(
        errors,
        vec![
            "unknown input `verison`; did you mean `version`?",
            "input `target`: `prod` is not one of `staging`, `production`; did you mean `production`?",
            "input `keep`: `many` is not a number",
            "input `dry_run`: `yes` is not a bool; expected `true` or `false`",
            "missing required input `version`",
        ]
    );
}

#[test]
fn env_uses_inputs_and_run_id() {
    let w = workflow();
    let inputs = w.resolve_inputs(&given(&[("version", "3")])).unwrap();
    let env = w.resolve_env(&inputs, "r1").unwrap();
    assert_eq!(
        serde_json::Value::Object(env),
        json!({"TAG": "v3-r1", "KEEP": "5"})
    );
}
