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
            "config.yaml:9:7: step `deploy`: `with`: Additional properties are not allowed ('extra' was unexpected)",
        ]
    );
    let shown: Vec<String> = shiphat_workflow::check_config(&w, &w.steps[1], SCHEMA)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        shown,
        vec!["config.yaml:10:5: step `bare`: `with`: \"url\" is a required property"]
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
