//! {{name}}: a shiphat plugin. `describe` says what it is; `run` runs one attempt of a step.

wit_bindgen::generate!({ path: "wit", world: "step", generate_all });

use shiphat::plugin::host::{self, Level};

struct Plugin;

impl Guest for Plugin {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "{{name}}".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Greets someone.".into(),
            config_schema: serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": { "name": { "type": "string", "description": "Who to greet." } },
                "additionalProperties": false
            })
            .to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config: serde_json::Value = serde_json::from_str(&input.config)
            .map_err(|e| StepError::InvalidConfig(e.to_string()))?;
        let name = config["name"].as_str().unwrap_or("world");
        host::log(Level::Info, &format!("hello, {name}"));
        Ok(StepOutput {
            outputs: serde_json::json!({ "greeted": name }).to_string(),
            summary: format!("greeted {name}"),
        })
    }
}

export!(Plugin);
