//! Where secret values come from: a secrets file, then the engine's own environment.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// Secret values by name. Only the names a step's `allow.secrets` grants are ever looked up.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    file: Arc<BTreeMap<String, String>>,
    from_env: bool,
}

impl Secrets {
    /// No secrets at all.
    pub fn none() -> Self {
        Secrets::default()
    }

    /// Secrets from the process environment: a granted secret `NAME` is the variable `NAME`.
    pub fn from_env() -> Self {
        Secrets {
            file: Arc::default(),
            from_env: true,
        }
    }

    /// Adds a secrets file: `NAME=value` lines; blank lines and `#` comments are ignored.
    /// Values from the file win over the environment.
    pub fn with_file(mut self, path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read secrets file `{}`: {e}", path.display()))?;
        let mut map = BTreeMap::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!(
                    "{}:{}: expected `NAME=value`",
                    path.display(),
                    index + 1
                ));
            };
            map.insert(name.trim().to_owned(), value.to_owned());
        }
        self.file = Arc::new(map);
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(value) = self.file.get(name) {
            return Some(value.clone());
        }
        if self.from_env {
            std::env::var(name).ok()
        } else {
            None
        }
    }
}
