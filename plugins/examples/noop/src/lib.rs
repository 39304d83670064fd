//! A plugin that does nothing, as fast as it can.
//!
//! It is the baseline for the engine's benchmarks: whatever a step using it costs is the
//! engine's own overhead (instantiation, the calls, the bookkeeping). It therefore uses only
//! the generated bindings, and does not even parse its configuration: the engine has already
//! checked it against a schema that admits nothing but `{}`.

use shiphat_plugin_sdk::{Guest, PluginInfo, StepError, StepInput, StepOutput};

struct Noop;

impl Guest for Noop {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Does nothing; the baseline for benchmarks.".into(),
            config_schema: r#"{"$schema":"https://json-schema.org/draft/2020-12/schema","description":"noop takes no configuration.","type":"object","additionalProperties":false}"#.into(),
        }
    }

    fn run(_input: StepInput) -> Result<StepOutput, StepError> {
        Ok(StepOutput {
            outputs: "{}".into(),
            summary: "nothing to do".into(),
        })
    }
}

shiphat_plugin_sdk::export!(Noop);
