//! Where `uses:` finds a plugin.

use std::path::PathBuf;

use shiphat_workflow::PluginRef;

/// The directories searched for `uses: NAME`, in order.
#[derive(Clone, Debug, Default)]
pub struct PluginPath {
    dirs: Vec<PathBuf>,
}

impl PluginPath {
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        PluginPath { dirs }
    }

    /// `SHIPHAT_PLUGIN_PATH`-style text: directories separated by the platform's separator.
    pub fn parse_env(value: &std::ffi::OsStr) -> Vec<PathBuf> {
        std::env::split_paths(value)
            .filter(|p| !p.as_os_str().is_empty())
            .collect()
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    /// The file a step's `uses:` names, and the digest it is pinned to, if any.
    pub fn resolve(&self, uses: &PluginRef) -> Result<(PathBuf, Option<[u8; 32]>), String> {
        match uses {
            PluginRef::Path { path, sha256 } => {
                if path.is_file() {
                    Ok((path.clone(), *sha256))
                } else {
                    Err(format!("plugin file `{}` does not exist", path.display()))
                }
            }
            PluginRef::Name { name, sha256 } => self
                .find(name)
                .map(|path| (path, *sha256))
                .ok_or_else(|| self.not_found(name)),
            // Found in a registry's cache by the runner, not on the plugin path.
            PluginRef::Oci(r) => Err(format!("`{r}` is not on the plugin path")),
        }
    }

    fn find(&self, name: &str) -> Option<PathBuf> {
        // Cargo names a crate's output after the crate with `-` turned into `_`.
        let names = [
            format!("{name}.wasm"),
            format!("{}.wasm", name.replace('-', "_")),
        ];
        self.dirs
            .iter()
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find(|p| p.is_file())
    }

    fn not_found(&self, name: &str) -> String {
        let searched: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("`{}`", d.display()))
            .collect();
        if searched.is_empty() {
            return format!(
                "plugin `{name}` not found: the plugin path is empty; build the bundled plugins with `cargo xtask plugins`, or add a directory with `--plugin-path` or SHIPHAT_PLUGIN_PATH"
            );
        }
        let found = self.names();
        let hint = match shiphat_workflow::suggest(name, found.iter().map(String::as_str)) {
            Some(close) => format!("did you mean `{close}`?"),
            None if found.is_empty() => "build the bundled plugins with `cargo xtask plugins`, or add the directory that holds `NAME.wasm` with `--plugin-path` or SHIPHAT_PLUGIN_PATH".to_owned(),
            None => format!(
                "found {}; or add the directory that holds `{name}.wasm` with `--plugin-path` or SHIPHAT_PLUGIN_PATH",
                found.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
            ),
        };
        format!(
            "plugin `{name}` not found in {}; {hint}",
            searched.join(", ")
        )
    }

    /// The plugin names found on the path (`NAME.wasm`, with `_` shown as `-` as `uses:`
    /// would write it), sorted, without repeats.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dirs
            .iter()
            .filter_map(|dir| std::fs::read_dir(dir).ok())
            .flat_map(|entries| entries.flatten())
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                Some(name.strip_suffix(".wasm")?.replace('_', "-"))
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}
