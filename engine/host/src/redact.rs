//! Keeps granted secret values out of everything a step leaves behind: logs, outputs,
//! summaries and error messages.

use std::sync::Arc;

use crate::Outcome;

/// What a redacted secret is replaced with.
pub const REDACTED: &str = "***";

/// Secrets this short would redact ordinary words and numbers everywhere; they are still
/// granted, but cannot be recognised in text.
const MIN_REDACTED_LEN: usize = 4;

/// Replaces every occurrence of a set of secret values.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    secrets: Arc<Vec<String>>,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<String> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_REDACTED_LEN)
            .map(str::to_owned)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor {
            secrets: Arc::new(secrets),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    pub fn redact(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in self.secrets.iter() {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// Redacts every string in a JSON value, object keys included.
    pub fn redact_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(self.redact_map(map)),
            other => other,
        }
    }

    fn redact_map(
        &self,
        map: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Map<String, serde_json::Value> {
        if self.is_empty() {
            return map;
        }
        map.into_iter()
            .map(|(k, v)| (self.redact(&k), self.redact_json(v)))
            .collect()
    }

    pub(crate) fn redact_outcome(&self, outcome: Outcome) -> Outcome {
        use crate::Fault;
        if self.is_empty() {
            return outcome;
        }
        match outcome {
            Outcome::Succeeded { outputs, summary } => Outcome::Succeeded {
                outputs: self.redact_map(outputs),
                summary: self.redact(&summary),
            },
            Outcome::Failed { message, outputs } => Outcome::Failed {
                message: self.redact(&message),
                outputs: self.redact_map(outputs),
            },
            Outcome::InvalidConfig(m) => Outcome::InvalidConfig(self.redact(&m)),
            Outcome::Transient(m) => Outcome::Transient(self.redact(&m)),
            Outcome::Fault(Fault::Panic(m)) => Outcome::Fault(Fault::Panic(self.redact(&m))),
            Outcome::Fault(Fault::Trap(m)) => Outcome::Fault(Fault::Trap(self.redact(&m))),
            Outcome::Fault(Fault::BadOutput(m)) => {
                Outcome::Fault(Fault::BadOutput(self.redact(&m)))
            }
            Outcome::Fault(Fault::Setup(m)) => Outcome::Fault(Fault::Setup(self.redact(&m))),
            Outcome::Fault(other) => Outcome::Fault(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_is_replaced_longest_first() {
        let r = Redactor::new(["hunter2", "hunter2-extended", "ab"]);
        assert_eq!(
            r.redact("pw=hunter2-extended, again hunter2"),
            "pw=***, again ***"
        );
        // Too short to recognise safely: left alone.
        assert_eq!(r.redact("ab"), "ab");
    }

    #[test]
    fn json_keys_and_values_are_redacted() {
        let r = Redactor::new(["s3cr3t"]);
        let v = serde_json::json!({"s3cr3t": ["x s3cr3t", 1], "n": null});
        assert_eq!(
            r.redact_json(v),
            serde_json::json!({"***": ["x ***", 1], "n": null})
        );
    }
}
