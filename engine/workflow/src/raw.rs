//! The workflow file as written: serde types that mirror the YAML one to one. Nothing here is
//! checked beyond its shape; `check` turns these into the plan.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "shiphat workflow")]
pub(crate) struct RawWorkflow {
    /// The workflow's name, shown in run history.
    pub name: String,
    pub description: Option<String>,
    /// Parameters given when the workflow is started.
    #[serde(default)]
    pub inputs: BTreeMap<String, RawInput>,
    /// Environment variables; values may use `inputs` and `run.id`.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub concurrency: Option<RawConcurrency>,
    pub resume: Option<RawResume>,
    /// What the daemon does with a run requested outside its deploy window: `refuse` (409)
    /// or `wait` (queued until the window opens).
    pub outside_window: Option<RawOutsideWindow>,
    pub steps: Vec<RawStep>,
    #[serde(default)]
    pub on_failure: Vec<RawStep>,
    #[serde(default)]
    pub finally: Vec<RawStep>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInput {
    #[serde(rename = "type")]
    pub kind: RawInputKind,
    pub description: Option<String>,
    #[schemars(with = "Option<serde_json::Value>")]
    pub default: Option<serde_yaml::Value>,
    #[serde(default)]
    pub required: bool,
    pub choices: Option<Vec<String>>,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawInputKind {
    String,
    Number,
    Bool,
    Choice,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawConcurrency {
    Key(String),
    Full {
        key: String,
        #[serde(default = "yes")]
        queue: bool,
    },
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawResume {
    Manual,
    Auto,
}

#[derive(Deserialize, JsonSchema, Clone, Copy)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawOutsideWindow {
    Refuse,
    Wait,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStep {
    pub id: String,
    pub name: Option<String>,
    /// A plugin name, `name@sha256:HEX`, or a path to a `.wasm` component.
    pub uses: Option<String>,
    /// Instead of `uses`: the step waits for a person's decision.
    pub approval: Option<RawApproval>,
    #[schemars(with = "Option<serde_json::Map<String, serde_json::Value>>")]
    pub with: Option<serde_yaml::Mapping>,
    pub allow: Option<RawAllow>,
    pub needs: Option<OneOrMany>,
    #[serde(rename = "if")]
    pub condition: Option<Text>,
    pub timeout: Option<Text>,
    pub memory: Option<Text>,
    pub stack: Option<Text>,
    pub log_limit: Option<Text>,
    pub output_limit: Option<Text>,
    pub retries: Option<RawRetries>,
    #[serde(default)]
    pub continue_on_error: bool,
    #[serde(default)]
    pub idempotent: bool,
}

/// A step that asks people to approve or reject before the run goes on.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApproval {
    /// What the approvers read; `${{ }}` may quote inputs and earlier steps' outputs.
    pub message: String,
    /// Who may decide: roles and/or principals. Without it, anyone who may start the workflow.
    pub approvers: Option<RawApprovers>,
    /// How many approvals are needed; one rejection is enough to reject. Default 1.
    pub required: Option<u32>,
    /// Whether the person who started the run may approve it. Default false (four eyes).
    #[serde(default)]
    pub allow_self: bool,
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApprovers {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub principals: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

#[derive(Deserialize, JsonSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAllow {
    #[serde(default)]
    pub read: Vec<String>,
    #[serde(default)]
    pub write: Vec<String>,
    #[serde(default)]
    pub http: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secrets: Vec<String>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum RawRetries {
    Count(u32),
    Full(RawRetryPolicy),
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetryPolicy {
    pub count: u32,
    pub backoff: Option<RawBackoff>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackoff {
    pub initial: Option<Text>,
    pub factor: Option<f64>,
    pub max: Option<Text>,
}

/// A scalar read as text: durations and sizes may be written as bare numbers (`memory: 1048576`)
/// or with units (`memory: 1GiB`), and `if: true` is an expression too.
pub(crate) struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Text;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Text {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["string", "number", "boolean"] })
    }
}
