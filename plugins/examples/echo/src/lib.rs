//! A plugin that repeats what it is told: it logs a message and returns the outputs it was
//! given, or fails, fails transiently, or dawdles, as its configuration asks.
//!
//! It is the smallest plugin that exercises every path a step can take, which makes it the
//! workhorse of demos and of the engine's tests (retries, failures, timeouts, outputs flowing
//! into later steps). It deliberately reaches nothing outside itself: no files, no network.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use shiphat_plugin_sdk::{self as sdk, Guest, PluginInfo, StepError, StepInput, StepOutput};

struct Echo;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    message: Option<String>,
    #[serde(default)]
    outputs: Map<String, Value>,
    fail: Option<String>,
    transient_until: Option<u32>,
    sleep_ms: Option<u64>,
}

impl Guest for Echo {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Logs a message and returns the outputs it was given, or fails as told."
                .into(),
            config_schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "message": {
                        "type": "string",
                        "description": "Logged at info; also the summary."
                    },
                    "outputs": {
                        "type": "object",
                        "description": "Returned as the step's outputs. Defaults to `{}`."
                    },
                    "fail": {
                        "type": "string",
                        "description": "When set, the step fails with this message, outputs included."
                    },
                    "transient_until": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Attempts up to and including this one fail transiently, so retries can be tested."
                    },
                    "sleep_ms": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Milliseconds to sleep before answering, so timeouts can be tested."
                    }
                },
                "additionalProperties": false
            })
            .to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config: Config = sdk::config(&input)?;
        if let Some(message) = &config.message {
            sdk::info(message);
        }
        if let Some(ms) = config.sleep_ms {
            // On wasip2 this is one blocking `wasi:clocks` call: the host sleeps, not the guest.
            std::thread::sleep(Duration::from_millis(ms));
        }
        let attempt = input.context.attempt;
        if let Some(until) = config.transient_until.filter(|&until| attempt <= until) {
            return Err(sdk::transient(format!(
                "attempt {attempt} of {until} that fail transiently"
            )));
        }
        let outputs = Value::Object(config.outputs);
        if let Some(message) = config.fail {
            return Err(sdk::failed_with(message, outputs));
        }
        let summary = match &config.message {
            Some(message) => format!("echo: {message}"),
            None => "echo".to_string(),
        };
        Ok(StepOutput {
            outputs: sdk::outputs(outputs),
            summary,
        })
    }
}

shiphat_plugin_sdk::export!(Echo);
