//! Deploys a release, one of two ways.
//!
//! - `strategy: symlink` lays releases out as Capistrano does: each release is a directory
//!   `releases/<release>/` under the target, with a manifest, and `current` is a relative
//!   symlink to one of them, switched atomically (a temporary link renamed over it). A release
//!   is copied (or unpacked from a `.tar.gz`) into a hidden partial directory and renamed into
//!   place only once complete, so however the step dies, `current` points at a whole release.
//!   `action: rollback` switches `current` back.
//! - `strategy: webhook` POSTs a signed JSON payload to a deploy API and, when the API answers
//!   with a status URL, polls it until the deploy is done.
//!
//! A symlink step holds a lock in the target (`<target>/.shiphat-lock`, see `lock.rs`) from
//! reading `current` to pruning, so two deploys of one target never interleave, even from two
//! `shiphat run` processes with no daemon between them.
//!
//! With `durable: true` (the default) it makes a release's files and directories durable
//! before `current` is switched (one `host.sync-filesystem`, else an `fsync` of each), and
//! `fsync`s the directories holding `releases/<release>` and `current` after each rename, so a deploy that finished survives a power cut, not only a kill. It does
//! not keep file modes (WASI has none).

mod config;
mod files;
mod lock;
mod symlink;
mod webhook;

use serde_json::json;
use shiphat_plugin_sdk::{self as sdk, Guest, PluginInfo, StepError, StepInput, StepOutput};

use crate::config::{Config, Strategy};

struct Deployer;

impl Guest for Deployer {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Deploys a release: Capistrano-style release directories with an atomic \
                          `current` symlink and rollback, or a signed webhook to a deploy API."
                .into(),
            config_schema: schema().to_string(),
        }
    }

    fn run(input: StepInput) -> Result<StepOutput, StepError> {
        let config: Config = sdk::config(&input)?;
        match config.strategy {
            Strategy::Symlink => symlink::run(&input.context, config.symlink()?),
            Strategy::Webhook => webhook::run(&input.context, config.webhook()?),
        }
    }
}

/// The keys only `strategy: webhook` takes.
const WEBHOOK_ONLY: [&str; 5] = ["url", "secret", "environment", "poll_interval", "timeout"];
/// The keys only `strategy: symlink` takes.
const SYMLINK_ONLY: [&str; 5] = ["source", "target", "keep", "wait_for_lock", "durable"];

/// The JSON Schema of the `with:` block. The plugin checks the same rules again after the
/// engine resolved `${{ ... }}` expressions, which the schema cannot see through.
fn schema() -> serde_json::Value {
    let forbid = |keys: &[&str]| -> serde_json::Value {
        keys.iter().map(|k| (k.to_string(), json!(false))).collect()
    };
    let duration = |what: &str| json!({ "type": "string", "description": what });
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "strategy": {
                "enum": ["symlink", "webhook"],
                "description": "How to deploy: `symlink` copies the release into `<target>/releases/<release>/` and points `<target>/current` at it; `webhook` POSTs a signed payload to a deploy API."
            },
            "action": {
                "enum": ["deploy", "rollback"],
                "default": "deploy",
                "description": "`deploy` (the default) a release, or `rollback`: with `symlink`, point `current` at the release before it (or at `release`, when given); with `webhook`, send `action: rollback` for `release`."
            },
            "release": {
                "type": ["string", "integer", "null"],
                "pattern": "^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}$",
                "description": "The release name, e.g. `42` or `1.4.2`: one path component of letters, digits, `.`, `_`, `+` and `-`, not starting with `.`, at most 128 characters. Required to deploy; for a symlink rollback, the release to go back to (null or absent: the one before the current one)."
            },
            "source": {
                "type": "string",
                "x-shiphat-grant": "read",
                "description": "symlink deploy: the build to deploy, a directory or a `.tar.gz`/`.tgz` file, inside a directory granted by `allow.read` (or `allow.write`)."
            },
            "target": {
                "type": "string",
                "x-shiphat-grant": "write",
                "description": "symlink: the deploy directory holding `releases/` and `current`, inside a directory granted by `allow.write`."
            },
            "keep": {
                "type": "integer",
                "minimum": 1,
                "default": 5,
                "description": "symlink deploy: how many releases to keep, newest first; the current and the previous release are never deleted."
            },
            "wait_for_lock": duration("symlink: how long to wait when another deploy or rollback holds the target's lock (`<target>/.shiphat-lock`), e.g. `2m`. Default: do not wait; fail at once, naming the holder and its start time."),
            "durable": {
                "type": "boolean",
                "default": true,
                "description": "symlink: sync the release's files and directories to disk before `current` is switched (one filesystem sync), and the target after, so a finished deploy survives a power cut. `false` survives the process dying but not a power cut, and is faster on many small files."
            },
            "url": {
                "type": "string",
                "x-shiphat-grant": "http",
                "description": "webhook: the deploy API's URL (`http://` or `https://`); its host must be granted by `allow.http`."
            },
            "secret": {
                "type": "string",
                "description": "webhook: the name of the secret (granted by `allow.secrets`) whose value is the HMAC-SHA256 key for `X-Shiphat-Signature`."
            },
            "environment": {
                "type": "string",
                "description": "webhook: the environment to deploy to, sent as `environment` in the payload (null when absent)."
            },
            "poll_interval": duration("webhook: how long to wait between polls of the deploy's status URL, e.g. `2s` or `500ms`. Default `2s`."),
            "timeout": duration("webhook: how long to poll the status URL before giving up, e.g. `10m`. Default `10m`. The step's own `timeout:` still applies.")
        },
        "required": ["strategy"],
        // Each strategy requires its keys and refuses the other's, so `validate` catches
        // `url` with `strategy: symlink` before anything runs.
        "allOf": [
            {
                "if": { "properties": { "strategy": { "const": "symlink" } } },
                "then": { "required": ["target"], "properties": forbid(&WEBHOOK_ONLY) }
            },
            {
                "if": {
                    "properties": {
                        "strategy": { "const": "symlink" },
                        "action": { "const": "deploy" }
                    }
                },
                "then": { "required": ["source", "release"] }
            },
            {
                "if": { "properties": { "strategy": { "const": "webhook" } } },
                "then": { "required": ["url", "secret", "release"], "properties": forbid(&SYMLINK_ONLY) }
            }
        ],
        "additionalProperties": false
    })
}

shiphat_plugin_sdk::export!(Deployer);
