//! A plugin that tries to reach what it is told to (files, environment variables, secrets,
//! hosts) and reports what happened, for the engine's tests of the sandbox and its grants.
//!
//! It never fails: every attempt, allowed or refused, is an entry in its outputs, so one
//! step shows the whole picture and a test asserts on data rather than on error text alone.
//! It also lists the preopened directories, which is the quickest way to see what a step's
//! `allow.read` and `allow.write` turned into.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use shiphat_plugin_sdk::bindings::wasi::filesystem::preopens;
use shiphat_plugin_sdk::{
    self as sdk, Guest, Output, PluginInfo, StepError, StepInput, StepOutput,
};

/// How much of a file or response body is reported: enough to recognise the content, little
/// enough that probing many paths stays far below the output limit.
const EXCERPT: usize = 200;

/// What `write` puts in each file.
const WRITTEN: &str = "written by shiphat's probe plugin\n";

/// How long one HTTP probe may take. Tests point it at local servers or at hosts that are
/// denied outright, so a longer wait would only ever mean something is wrong.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

struct Probe;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    read: Vec<String>,
    #[serde(default)]
    write: Vec<String>,
    #[serde(default)]
    env: bool,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    http: Vec<String>,
}

impl Guest for Probe {
    fn describe() -> PluginInfo {
        let list = |what: &str| json!({ "type": "array", "items": { "type": "string" }, "description": what });
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Tries to reach files, environment, secrets and hosts, and reports what happened."
                .into(),
            config_schema: json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "type": "object",
                "properties": {
                    "read": list("Paths to read; each reports its first 200 bytes (or its entries, for a directory) or the error."),
                    "write": list("Paths to write a small file at; each reports success or the error."),
                    "env": {
                        "type": "boolean",
                        "description": "Report every environment variable the plugin can see."
                    },
                    "secrets": list("Secret names to ask the engine for; each reports its value or null."),
                    "http": list("URLs to GET; each reports the status and first 200 bytes of the body, or the error (e.g. `HTTP-request-denied`).")
                },
                "additionalProperties": false
            })
            .to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config: Config = sdk::config(&input)?;
        let preopens: Vec<String> = preopens::get_directories()
            .into_iter()
            .map(|(_, name)| name)
            .collect();
        let read = each(&config.read, read);
        let write = each(&config.write, write);
        let env: Map<String, Value> = if config.env {
            std::env::vars()
                .map(|(k, v)| (k, Value::String(v)))
                .collect()
        } else {
            Map::new()
        };
        let secrets = each(&config.secrets, |name| {
            sdk::secret(name).map_or(Value::Null, Value::String)
        });
        let http = each(&config.http, http);

        let tried =
            config.read.len() + config.write.len() + config.secrets.len() + config.http.len();
        Ok(Output::new(format!(
            "probed {tried} things; {} preopens",
            preopens.len()
        ))
        .set("preopens", preopens)
        .set("dry_run", input.context.dry_run)
        .set("attempt", input.context.attempt)
        .set("read", read)
        .set("write", write)
        .set("env", env)
        .set("secrets", secrets)
        .set("http", http)
        .into())
    }
}

/// A JSON object with one entry per item, computed by `probe`.
fn each(items: &[String], probe: impl Fn(&str) -> Value) -> Map<String, Value> {
    items
        .iter()
        .map(|item| (item.clone(), probe(item)))
        .collect()
}

fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(EXCERPT)]).into_owned()
}

fn refused(error: impl std::fmt::Display) -> Value {
    json!({ "ok": false, "error": error.to_string() })
}

fn read(path: &str) -> Value {
    let listing = std::fs::metadata(path).map(|m| m.is_dir());
    let result = match listing {
        Ok(true) => std::fs::read_dir(path).and_then(|entries| {
            let mut names = entries
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            names.sort();
            Ok(json!({ "ok": true, "entries": names }))
        }),
        _ => std::fs::read(path).map(|bytes| json!({ "ok": true, "content": excerpt(&bytes) })),
    };
    result.unwrap_or_else(refused)
}

fn write(path: &str) -> Value {
    match std::fs::write(path, WRITTEN) {
        Ok(()) => json!({ "ok": true, "bytes": WRITTEN.len() }),
        Err(e) => refused(e),
    }
}

fn http(url: &str) -> Value {
    match sdk::http::get(url, Some(HTTP_TIMEOUT)) {
        Ok(response) => {
            json!({ "ok": true, "status": response.status, "body": excerpt(&response.body) })
        }
        Err(e) => refused(e),
    }
}

shiphat_plugin_sdk::export!(Probe);
