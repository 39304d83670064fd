//! Keeps granted secret values out of everything a step leaves behind: logs, outputs,
//! summaries and error messages.
//!
//! Text is redacted whole wherever it can be. Where a stream must be cut (a long line flushed
//! before its newline, a log budget spent mid-line), [`Redactor::safe_cut`] moves the cut so
//! no secret straddles it, and [`Redactor::mask_partial_tail`] masks the start of a secret
//! left at an end that will never be completed.

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
    /// A redactor for these secret values. A value of several lines is also recognised line by
    /// line, since logs are split into lines before they are redacted.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut secrets: Vec<String> = values
            .into_iter()
            .flat_map(|v| {
                let lines = v
                    .contains('\n')
                    .then(|| v.lines().map(|l| l.trim_end_matches('\r')));
                std::iter::once(v).chain(lines.into_iter().flatten())
            })
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

    /// Where to cut `bytes` so that no secret straddles the cut and the part kept back is long
    /// enough to hold the start of any secret the bytes still to come may complete. Everything
    /// before the cut can be redacted and let go; the rest must wait for more bytes. With no
    /// secrets, that is everything.
    pub(crate) fn safe_cut(&self, bytes: &[u8]) -> usize {
        let Some(longest) = self.secrets.first() else {
            return bytes.len();
        };
        let mut cut = bytes.len().saturating_sub(longest.len() - 1);
        loop {
            // Never split a character: its halves would print as replacement characters.
            while cut > 0 && cut < bytes.len() && bytes[cut] & 0xc0 == 0x80 {
                cut -= 1;
            }
            let straddling = self
                .secrets
                .iter()
                .filter_map(|secret| {
                    let secret = secret.as_bytes();
                    (cut.saturating_sub(secret.len() - 1)..cut)
                        .find(|&start| bytes[start..].starts_with(secret))
                })
                .min();
            match straddling {
                // Each round moves the cut back, so this ends.
                Some(start) => cut = start,
                None => return cut,
            }
        }
    }

    /// Replaces the end of `bytes` when it is the beginning of a secret: text cut there for
    /// good (a spent log budget, a plugin stopped mid-line) would otherwise show part of the
    /// secret in clear. A beginning shorter than [`MIN_REDACTED_LEN`] is left, as a whole
    /// secret that short would be.
    pub(crate) fn mask_partial_tail(&self, bytes: &mut Vec<u8>) {
        let longest_start = self
            .secrets
            .iter()
            .filter_map(|secret| {
                let secret = secret.as_bytes();
                let from = bytes.len().saturating_sub(secret.len() - 1);
                let to = bytes.len().saturating_sub(MIN_REDACTED_LEN - 1);
                (from..to).find(|&start| secret.starts_with(&bytes[start..]))
            })
            .min();
        if let Some(start) = longest_start {
            bytes.truncate(start);
            bytes.extend_from_slice(REDACTED.as_bytes());
        }
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
    fn a_secret_of_several_lines_is_also_redacted_line_by_line() {
        let r = Redactor::new(["-----BEGIN KEY-----\r\nc2VjcmV0\n-----END KEY-----"]);
        assert_eq!(r.redact("key: c2VjcmV0"), "key: ***");
    }

    #[test]
    fn a_cut_never_splits_a_secret_and_keeps_back_a_possible_start() {
        let r = Redactor::new(["s3cr3t-value"]);
        // A whole secret across the naive cut: the cut moves to its start.
        let text = b"aaaaaaaaaaaaaaaaaaaas3cr3t-valu";
        let cut = r.safe_cut(text);
        assert!(cut <= 20, "{cut}");
        let text = b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaas3cr3t-value and more";
        let cut = r.safe_cut(text);
        assert!(
            !text[..cut].ends_with(b"s3") && (cut <= 38 || cut >= 50),
            "{cut}"
        );
        assert_eq!(Redactor::default().safe_cut(b"abc"), 3);
    }

    #[test]
    fn the_start_of_a_secret_at_a_final_cut_is_masked() {
        let r = Redactor::new(["s3cr3t-value"]);
        let mut text = b"token=s3cr3t-v".to_vec();
        r.mask_partial_tail(&mut text);
        assert_eq!(text, b"token=***");
        let mut text = b"nothing here".to_vec();
        r.mask_partial_tail(&mut text);
        assert_eq!(text, b"nothing here");
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
