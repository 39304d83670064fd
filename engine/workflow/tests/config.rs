//! Checking a step's `with:` against a plugin's configuration schema.

use std::path::Path;

use serde_json::json;
use shiphat_workflow::{ConfigSchema, parse, validate_config};

const SCHEMA: &str = r#"{
    "type": "object",
    "properties": {
        "keep": {"type": "integer"},
        "url": {"type": "string", "format": "uri"},
        "targets": {"type": "array", "items": {"type": "string"}}
    },
    "required": ["url"],
    "additionalProperties": false
}"#;

#[test]
fn errors_point_at_the_key_and_skip_templates() {
    let text = "\
name: config
steps:
  - id: deploy
    uses: deployer
    with:
      keep: five
      url: ${{ run.id }}
      targets: [a, 3, '${{ run.id }}']
      extra: true
  - id: bare
    uses: deployer
";
    let w = parse(text, Path::new("config.yaml")).unwrap();
    let shown: Vec<String> = shiphat_workflow::check_config(&w, &w.steps[0], SCHEMA)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        vec![
            "config.yaml:6:7: step `deploy`: `with.keep`: \"five\" is not of type \"integer\"",
            "config.yaml:8:20: step `deploy`: `with.targets[1]`: 3 is not of type \"string\"",
            "config.yaml:9:7: step `deploy`: `with`: unknown key `extra`",
        ]
    );
    let shown: Vec<String> = shiphat_workflow::check_config(&w, &w.steps[1], SCHEMA)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        vec!["config.yaml:10:5: step `bare`: `with`: `url` is required"]
    );
}

#[test]
fn a_broken_schema_is_reported() {
    let w = parse(
        "name: x\nsteps:\n  - id: a\n    uses: p\n",
        Path::new("x.yaml"),
    )
    .unwrap();
    let d = shiphat_workflow::check_config(&w, &w.steps[0], "{nope");
    assert_eq!(d.len(), 1);
    assert!(d[0].message.contains("not valid JSON"), "{}", d[0]);
}

#[test]
fn runtime_validation_reuses_a_compiled_schema() {
    let schema = ConfigSchema::compile(SCHEMA).unwrap();
    assert_eq!(
        validate_config(&schema, &json!({"url": "https://x"})),
        Ok(())
    );
    let errors = schema
        .validate(&json!({"url": "https://x", "keep": "5"}))
        .unwrap_err();
    assert_eq!(
        errors,
        vec!["`with.keep`: \"5\" is not of type \"integer\""]
    );
    assert!(ConfigSchema::compile(r#"{"type": 12}"#).is_err());
}

#[test]
fn a_with_block_without_expressions_is_known_before_the_run() {
    let text = "\
name: config
steps:
  - id: literal
    uses: deployer
    with:
      url: https://x
      keep: 5
      targets: [a, '$ {{ not an expression }}']
  - id: templated
    uses: deployer
    with:
      url: https://x
      targets: [a, 'v${{ run.id }}']
  - id: bare
    uses: deployer
";
    let w = parse(text, Path::new("config.yaml")).unwrap();
    assert_eq!(
        w.steps[0].with.literal(),
        Some(json!({"url": "https://x", "keep": 5, "targets": ["a", "$ {{ not an expression }}"]}))
    );
    // One expression anywhere, however deep, makes the whole block a run-time value.
    assert_eq!(w.steps[1].with.literal(), None);
    assert_eq!(w.steps[2].with.literal(), Some(json!({})));
}

#[test]
fn json_schema_describes_the_file() {
    let schema = shiphat_workflow::json_schema();
    let text = schema.to_string();
    for key in [
        "steps",
        "on_failure",
        "continue_on_error",
        "retries",
        "concurrency",
    ] {
        assert!(text.contains(key), "{key} missing from the schema");
    }
}

/// Regression: `report` for `reports` got jsonschema's "Additional properties are not
/// allowed", and a key refused by one form of the block "is not valid under any of the
/// schemas listed in the 'anyOf' keyword".
#[test]
fn messages_say_what_to_fix() {
    let schema = r#"{
        "type": "object",
        "properties": {
            "strategy": {"enum": ["symlink", "webhook"]},
            "reports": {"type": "array"},
            "url": {"type": "string"},
            "target": {"type": "string"}
        },
        "allOf": [
            {"if": {"properties": {"strategy": {"const": "symlink"}}},
             "then": {"required": ["target"], "properties": {"url": false}}}
        ],
        "additionalProperties": false
    }"#;
    let text = "name: c\nsteps:\n  - id: a\n    uses: p\n    with: { strategy: symlink, report: [x], url: http://x }\n";
    let w = parse(text, Path::new("c.yaml")).unwrap();
    let shown: Vec<String> = shiphat_workflow::check_config(&w, &w.steps[0], schema)
        .iter()
        .map(|d| d.message.clone())
        .collect();
    let all = shown.join("\n");
    assert!(
        all.contains("unknown key `report`; did you mean `reports`?"),
        "{all}"
    );
    assert!(
        all.contains("`target` is required with `strategy: symlink`"),
        "{all}"
    );
    assert!(
        all.contains("`url` is not used with `strategy: symlink`; remove it"),
        "{all}"
    );
    assert!(
        !all.contains("anyOf") && !all.contains("Additional properties"),
        "{all}"
    );
}

/// `validate` names a grant a step lacks, from the plugin's `x-shiphat-grant` annotations.
#[test]
fn annotated_paths_and_urls_are_checked_against_allow() {
    let schema = r#"{
        "type": "object",
        "properties": {
            "source": {"type": "string", "x-shiphat-grant": "read"},
            "target": {"type": "string", "x-shiphat-grant": "write"},
            "reports": {"type": "array", "items": {"type": "string", "x-shiphat-grant": "read"}},
            "address": {"type": "string", "x-shiphat-grant": "http"}
        }
    }"#;
    let text = "name: g\nsteps:\n  - id: deploy\n    uses: p\n    with: { source: build, target: www, reports: ['reports/*.xml'], address: 'http://127.0.0.1:18931/metrics' }\n    allow: { read: [www] }\n  - id: ok\n    uses: p\n    with: { source: build/x, target: www/app, reports: ['reports/*.xml'], address: 'https://prom.example.com/' }\n    allow: { read: [build, reports], write: [www], http: [prom.example.com] }\n";
    let w = parse(text, Path::new("g.yaml")).unwrap();
    let shown: Vec<String> = shiphat_workflow::check_config(&w, &w.steps[0], schema)
        .iter()
        .map(|d| d.message.clone())
        .collect();
    let all = shown.join("\n");
    assert!(
        all.contains("step `deploy`: `with.target`: the step writes `www` but `allow.write` does not grant it"),
        "{all}"
    );
    assert!(all.contains("reads `build` but `allow.read`"), "{all}");
    assert!(
        all.contains("add `reports` (or a directory above it)"),
        "{all}"
    );
    assert!(
        all.contains("does not grant `127.0.0.1:18931`; add `127.0.0.1:18931`"),
        "{all}"
    );
    assert_eq!(shown.len(), 4, "{all}");
    assert!(shiphat_workflow::check_config(&w, &w.steps[1], schema).is_empty());
}
