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
        let (files, unreadable) = workflow_files(dirs);
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
                    // Where GitHub's expression rules changed what the file means; said once
                    // per load, as `validate` says it.
                    for warning in &prepared.workflow.warnings {
                        tracing::warn!("{warning}");
                    }
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
        // A directory that cannot be read now (out of descriptors, a mount gone away) says
        // nothing about its files: its workflows stay in service as last loaded.
        let gone: Vec<PathBuf> = seen
            .keys()
            .filter(|f| !files.iter().any(|(g, _)| g == *f))
            .filter(|f| {
                !unreadable
                    .iter()
                    .any(|dir| f.parent() == Some(dir.as_path()))
            })
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

/// A workflow file found, with its modification time.
type Found = (PathBuf, Option<SystemTime>);

/// The `.yaml` and `.yml` files directly in `dirs`, with their modification times, and the
/// directories that could not be read in full.
fn workflow_files(dirs: &[PathBuf]) -> (Vec<Found>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir)
            .and_then(|entries| entries.collect::<Result<Vec<_>, _>>())
        {
            Ok(entries) => entries,
            // A directory that is not there holds no workflows.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(
                    "cannot read the workflow directory `{}`: {e}; its workflows stay as last loaded",
                    dir.display()
                );
                unreadable.push(dir.clone());
                continue;
            }
        };
        for entry in entries {
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
    (files, unreadable)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_cannot_be_read_is_reported_not_taken_as_empty() {
        // Bug: a directory that could not be read (no descriptors left) listed as empty, and
        // every workflow in it was taken out of service.
        let root = std::env::temp_dir().join(format!("shiphat-workflows-{}", std::process::id()));
        let good = root.join("good");
        std::fs::create_dir_all(&good).unwrap();
        std::fs::write(good.join("a.yaml"), "name: a\n").unwrap();
        // A file where a directory should be: reading it fails, as with no descriptors left.
        let bad = root.join("bad");
        std::fs::write(&bad, "").unwrap();
        let missing = root.join("missing");
        let (files, unreadable) = workflow_files(&[good.clone(), bad.clone(), missing]);
        std::fs::remove_dir_all(&root).unwrap();
        let names: Vec<_> = files.iter().map(|(path, _)| path.clone()).collect();
        assert_eq!(names, [good.join("a.yaml")]);
        assert_eq!(unreadable, [bad]);
    }
}
