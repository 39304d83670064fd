//! The workflows in service: loaded from the configured directories, reloaded when a file
//! changes. Changes are found by polling modification times every second rather than with
//! file-system notifications: one `stat` per file per second costs nothing at the scale of a
//! workflow directory, works the same on every file system (including network and container
//! mounts where inotify is unreliable), and needs no extra crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use shiphat_runner::{Prepared, Runner};

/// A workflow file as last seen.
struct Seen {
    modified: Option<SystemTime>,
    /// The name it declared when it last loaded, if it ever did.
    name: Option<String>,
}

/// The workflows in service, by name.
#[derive(Default)]
pub struct Workflows {
    by_name: RwLock<BTreeMap<String, Arc<Prepared>>>,
    seen: tokio::sync::Mutex<BTreeMap<PathBuf, Seen>>,
}

impl Workflows {
    pub fn get(&self, name: &str) -> Option<Arc<Prepared>> {
        self.by_name.read().unwrap().get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Prepared>> {
        self.by_name.read().unwrap().values().cloned().collect()
    }

    /// Loads new and changed files from `dirs` and drops the workflows of deleted files. A file
    /// that does not load is reported and skipped; the last good version of its workflow stays
    /// in service. Returns how many files were (re)loaded.
    pub async fn reload(&self, runner: &Runner, dirs: &[PathBuf]) -> usize {
        let mut seen = self.seen.lock().await;
        let files = workflow_files(dirs);
        let mut loaded = 0;
        for (file, modified) in &files {
            if seen
                .get(file)
                .is_some_and(|s| s.modified == *modified && modified.is_some())
            {
                continue;
            }
            let previous = seen.get(file).and_then(|s| s.name.clone());
            let name = match load(runner, file).await {
                Ok(prepared) => {
                    let name = prepared.workflow.name.clone();
                    let mut by_name = self.by_name.write().unwrap();
                    if let Some(old) = previous.filter(|old| *old != name) {
                        by_name.remove(&old);
                    }
                    by_name.insert(name.clone(), Arc::new(prepared));
                    tracing::info!("loaded workflow `{name}` from `{}`", file.display());
                    loaded += 1;
                    Some(name)
                }
                Err(message) => {
                    tracing::warn!(
                        "skipping `{}`: {message}{}",
                        file.display(),
                        match &previous {
                            Some(name) => format!("; the last good `{name}` stays in service"),
                            None => String::new(),
                        }
                    );
                    previous
                }
            };
            seen.insert(
                file.clone(),
                Seen {
                    modified: *modified,
                    name,
                },
            );
        }
        let gone: Vec<PathBuf> = seen
            .keys()
            .filter(|f| !files.iter().any(|(g, _)| g == *f))
            .cloned()
            .collect();
        for file in gone {
            if let Some(Seen {
                name: Some(name), ..
            }) = seen.remove(&file)
            {
                tracing::info!("workflow `{name}` removed with `{}`", file.display());
                self.by_name.write().unwrap().remove(&name);
            }
        }
        loaded
    }
}

async fn load(runner: &Runner, file: &Path) -> Result<Prepared, String> {
    let workflow = shiphat_workflow::load(file).map_err(|e| e.to_string())?;
    runner.prepare(workflow).await.map_err(|e| e.to_string())
}

/// The `.yaml` and `.yml` files directly in `dirs`, with their modification times.
fn workflow_files(dirs: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                files.push((path, modified));
            }
        }
    }
    files.sort();
    files
}
