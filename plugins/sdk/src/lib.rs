//! The way to write a shiphat plugin in Rust.
//!
//! A plugin is a WebAssembly component built for `wasm32-wasip2` that exports the `step`
//! world of `wit/shiphat.wit`. This crate is the one place that runs `wit_bindgen::generate!`
//! on that contract: it re-exports the generated types, the [`Guest`] trait and the
//! [`export!`] macro, and adds the few helpers every plugin wants: logging with a level
//! ([`info`], [`warn`], ...), [`secret`], a blocking HTTP client ([`http::request`]), a file
//! lock that nothing leaves behind ([`fs::LockFile`]), parsing
//! the `with:` block ([`config`]) and building results ([`Output`], [`outputs`], [`failed`],
//! [`transient`]).
//!
//! It deliberately holds no policy: it does not retry, cache, or decide what counts as a
//! failure. Everything a plugin may touch is still granted by the engine, step by step; the
//! helpers only make the grants pleasant to use. Files and environment variables need no
//! helper: `std::fs` and `std::env` reach the granted ones directly.
//!
//! # A plugin in full
//!
//! A plugin crate is a `cdylib` depending on this crate, `serde` and `serde_json`:
//!
//! ```no_run
//! use serde::Deserialize;
//! use shiphat_plugin_sdk::{self as sdk, Guest, Output, PluginInfo, StepError, StepInput, StepOutput};
//!
//! struct Greeter;
//!
//! #[derive(Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     name: String,
//! }
//!
//! impl Guest for Greeter {
//!     fn describe() -> PluginInfo {
//!         PluginInfo {
//!             name: env!("CARGO_PKG_NAME").into(),
//!             version: env!("CARGO_PKG_VERSION").into(),
//!             description: "Greets someone.".into(),
//!             config_schema: serde_json::json!({
//!                 "$schema": "https://json-schema.org/draft/2020-12/schema",
//!                 "type": "object",
//!                 "properties": { "name": { "type": "string", "description": "Who to greet." } },
//!                 "required": ["name"],
//!                 "additionalProperties": false
//!             })
//!             .to_string(),
//!         }
//!     }
//!
//!     fn run(input: StepInput) -> Result<StepOutput, StepError> {
//!         let config: Config = sdk::config(&input)?;
//!         sdk::info(&format!("hello, {}", config.name));
//!         Ok(Output::new(format!("greeted {}", config.name)).set("greeted", config.name).into())
//!     }
//! }
//!
//! shiphat_plugin_sdk::export!(Greeter);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm` file in
//! `target/wasm32-wasip2/release/` is the component the engine loads.

pub mod fs;
pub mod http;

/// Everything `wit-bindgen` generated from `wit/shiphat.wit` and the WASI packages it uses.
///
/// Plugins rarely need more than the re-exports at the crate root; the full tree is here for
/// the rest (for example `bindings::wasi::filesystem::preopens`).
#[allow(
    clippy::too_many_arguments,
    reason = "generated code mirrors the canonical ABI, which passes flattened values"
)]
pub mod bindings {
    // The world is `step` plus `wasi:filesystem/preopens`: the standard library does not
    // expose preopened directory names, and a plugin that wants to list what it was granted
    // needs them. The extra import costs nothing to plugins that do not call it, because the
    // component only imports what its code uses, and every shiphat host provides it anyway.
    wit_bindgen::generate!({
        path: "../../wit",
        inline: "
            package shiphat:plugin-sdk;

            world plugin {
                include shiphat:plugin/step@0.1.0;
                import wasi:filesystem/preopens@0.2.12;
            }
        ",
        world: "plugin",
        // Plugin crates invoke the macro, so it must be visible outside this crate, and must
        // find the types here without each plugin naming the path.
        pub_export_macro: true,
        default_bindings_module: "shiphat_plugin_sdk::bindings",
        generate_all,
    });
}

/// Exports a type implementing [`Guest`] as the plugin: `shiphat_plugin_sdk::export!(MyPlugin);`.
///
/// The long form `export!(MyPlugin with_types_in shiphat_plugin_sdk::bindings)` is the same.
pub use bindings::export;
pub use bindings::shiphat::plugin::host::Level;
pub use bindings::shiphat::plugin::types::{Failure, StepContext};
pub use bindings::{Guest, PluginInfo, StepError, StepInput, StepOutput};
/// Re-exported so that plugins build outputs and schemas with the same version the SDK uses.
pub use serde_json;

use bindings::shiphat::plugin::host;
use serde_json::{Map, Value};

/// Adds a line to the step's log at `level`.
///
/// Prefer this to `println!`: the engine keeps the level, and stdout lines all count as info.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// Logs detail for someone tracing the plugin itself.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Logs detail for someone debugging the step.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Logs what a person watching the deploy wants to see.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Logs that something is off while the step goes on.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Logs that something failed.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// The value of secret `name`, or `None` when the step's `allow.secrets` does not grant it or
/// the engine has no value for it.
///
/// Never log or output the value: the engine redacts it where it appears verbatim, but cannot
/// recognise it once hashed or encoded.
pub fn secret(name: &str) -> Option<String> {
    host::secret(name)
}

/// Parses the step's `with:` block into `T`.
///
/// A block that does not fit `T` becomes `step-error::invalid-config` carrying serde's
/// message, which names the offending key; the engine has already checked the block against
/// the plugin's schema, so this only fires when schema and `T` disagree.
pub fn config<T: serde::de::DeserializeOwned>(input: &StepInput) -> Result<T, StepError> {
    serde_json::from_str(&input.config).map_err(|e| StepError::InvalidConfig(e.to_string()))
}

/// The text of a JSON value, for `step-output.outputs` and `failure.outputs`.
///
/// The engine accepts only a JSON object there; pass one.
pub fn outputs(json: Value) -> String {
    json.to_string()
}

/// A `step-error::failed` with `message` and no outputs.
pub fn failed(message: impl Into<String>) -> StepError {
    StepError::Failed(Failure {
        message: message.into(),
        outputs: String::new(),
    })
}

/// A `step-error::failed` with `message` and what was measured before the failure.
pub fn failed_with(message: impl Into<String>, outputs: Value) -> StepError {
    StepError::Failed(Failure {
        message: message.into(),
        outputs: self::outputs(outputs),
    })
}

/// A `step-error::transient`: the step's `retries:` will try again.
pub fn transient(message: impl Into<String>) -> StepError {
    StepError::Transient(message.into())
}

/// A `step-error::invalid-config`: say which key is wrong and how to fix it.
pub fn invalid_config(message: impl Into<String>) -> StepError {
    StepError::InvalidConfig(message.into())
}

/// An I/O error as a person can act on it: what went wrong and which grant to check, without
/// the `(os error 44)` WASI errno that means nothing to anyone. Write it after the path:
/// `format!("`{}`: {}", path.display(), sdk::io_error(&e))`.
pub fn io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::NotFound => "does not exist, or is outside every granted directory; check the path and the step's `allow.read`/`allow.write`".into(),
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "not allowed: is it granted in `allow.write` (not only `allow.read`)?".into()
        }
        ErrorKind::AlreadyExists => "already exists".into(),
        ErrorKind::NotADirectory => "a part of the path is not a directory".into(),
        ErrorKind::IsADirectory => "is a directory, not a file".into(),
        ErrorKind::DirectoryNotEmpty => "is a directory that is not empty".into(),
        ErrorKind::StorageFull => "no space left on the device".into(),
        _ => {
            let text = e.to_string();
            match text.find(" (os error ") {
                Some(at) => text[..at].to_owned(),
                None => text,
            }
        }
    }
}

/// A successful step's result, built one output at a time.
///
/// ```
/// use shiphat_plugin_sdk::{Output, StepError, StepOutput};
///
/// let result: Result<StepOutput, StepError> =
///     Ok(Output::new("deployed 42").set("release", "42").set("canary", true).into());
/// assert_eq!(result.unwrap().summary, "deployed 42");
/// ```
#[derive(Debug, Clone, Default)]
pub struct Output {
    outputs: Map<String, Value>,
    summary: String,
}

impl Output {
    /// An empty set of outputs with a one-line `summary` for a person.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            outputs: Map::new(),
            summary: summary.into(),
        }
    }

    /// Sets output `key`, which later steps read as `steps.<id>.outputs.<key>`.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.outputs.insert(key.into(), value.into());
        self
    }

    /// Replaces the summary.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = summary.into();
        self
    }

    /// The `step-output` the engine receives.
    pub fn build(self) -> StepOutput {
        StepOutput {
            outputs: outputs(Value::Object(self.outputs)),
            summary: self.summary,
        }
    }
}

impl From<Output> for StepOutput {
    fn from(output: Output) -> Self {
        output.build()
    }
}
