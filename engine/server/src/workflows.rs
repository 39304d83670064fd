//! The workflows in service: loaded from the configured directories, reloaded when a file
//! changes. Changes are found by polling modification times every second rather than with
//! file-system notifications: one `stat` per file per second costs nothing at the scale of a
//! workflow directory, works the same on every file system (including network and container
//! mounts where inotify is unreliable), and needs no extra crate.
//!
//! A file is read and checked at once (`reload` returns when every changed file is parsed),
//! but its plugins are loaded in the background, each file on a task of its own: a plugin
//! that is not in the compile cache yet takes seconds to compile (24 s for the Python
//! example), and neither the daemon's start, nor its other workflows, nor a deploy should wait
//! for it. Until its plugins are loaded a workflow is `loading` (`compiling` while one
//! compiles): its runs are admitted against the checked file and wait (see
//! [`Workflows::hold`]). A changed file's new version loads beside the old one, which stays
//! in service until the new one is ready; one that fails to load leaves the old one there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use shiphat_runner::{CompileHook, Prepared, Runner};
use shiphat_workflow::Workflow;

/// The detail a queued run gets while its workflow's plugins load on this daemon. One text
/// for the whole wait, since the store appends each new hold detail to the run's: which
/// plugin compiles is the workflow's state (`GET /api/v1/workflows/{name}`).
pub const COMPILING: &str = "waits for its plugins to compile";

/// A workflow file as last seen.
struct Seen {
    modified: Option<SystemTime>,
    /// The name its version in service declared, if one loaded.
    name: Option<String>,
    /// The load of the file's newest version; an older load that ends later is ignored.
    generation: u64,
}

/// A version of a file whose plugins are loading.
struct Loading {
    file: PathBuf,
    generation: u64,
    workflow: Arc<Workflow>,
    /// The plugins it compiles now: file name and size in bytes.
    compiling: Vec<(String, u64)>,
}

/// One workflow name: the version in service, and a newer one loading.
#[derive(Default)]
struct Entry {
    serving: Option<Arc<Prepared>>,
    loading: Option<Loading>,
    /// Why the newest version of its file did not load (while an older one serves).
    error: Option<String>,
}

impl Entry {
    fn is_empty(&self) -> bool {
        self.serving.is_none() && self.loading.is_none()
    }
}

#[derive(Default)]
struct State {
    by_name: BTreeMap<String, Entry>,
    files: BTreeMap<PathBuf, Seen>,
    generation: u64,
}

/// Where a workflow stands, for its view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Readiness {
    /// Runs start now, on the version in service.
    pub ready: bool,
    /// The plugins compiling now (file name, bytes), for the workflow or a newer version.
    pub compiling: Vec<(String, u64)>,
    /// A newer version of its file is loading while this one serves.
    pub reloading: bool,
    /// Why the newest version of its file did not load; the last good one serves.
    pub error: Option<String>,
}

/// The workflows in service, by name.
#[derive(Default)]
pub struct Workflows {
    state: RwLock<State>,
    /// One look at the directories at a time (the periodic one and SIGHUP's).
    scanning: tokio::sync::Mutex<()>,
    /// Told whenever a workflow becomes ready: its waiting runs may start.
    pub changed: tokio::sync::Notify,
    /// Set once every file found at start has loaded or failed to.
    settled: AtomicBool,
    /// What reloads changed in what steps may reach, for the audit log
    /// ([`Workflows::take_grant_changes`]).
    grant_changes: std::sync::Mutex<Vec<GrantChange>>,
}

/// A reloaded workflow whose steps may now reach something else.
#[derive(Debug)]
pub struct GrantChange {
    pub workflow: String,
    pub file: PathBuf,
    pub diff: shiphat_workflow::GrantDiff,
}

/// The audit log's action for a reload that changed grants; its target is the workflow.
pub const RELOAD_ACTION: &str = "reload workflow";

const WIDENED: &str = "grants widened: ";
const NARROWED: &str = "grants narrowed: ";
/// Between the steps of an outcome; each step's part starts with `step `.
const STEP_SEPARATOR: &str = "; step `";

impl GrantChange {
    /// The change in words, as the audit log keeps it: the verdict, then a part per step,
    /// e.g. ``grants widened: step `deploy`: + http `hooks.example.com`, - read `build` ``.
    /// [`grant_steps`] reads it back.
    pub fn outcome(&self) -> String {
        let steps: Vec<String> = self
            .diff
            .steps
            .iter()
            .map(|s| {
                let mut parts: Vec<String> = s.added.iter().map(|a| format!("+ {a}")).collect();
                parts.extend(s.removed.iter().map(|r| format!("- {r}")));
                if let Some((was, is)) = &s.plugin {
                    parts.push(format!("plugin `{was}` → `{is}`"));
                }
                let what = match s.change {
                    shiphat_workflow::StepChange::Added => " (new step)",
                    shiphat_workflow::StepChange::Removed => " (removed)",
                    shiphat_workflow::StepChange::Changed => "",
                };
                format!("step `{}`{what}: {}", s.step, parts.join(", "))
            })
            .collect();
        let verdict = if self.diff.widened() {
            WIDENED
        } else {
            NARROWED
        };
        format!("{verdict}{}", steps.join("; "))
    }
}

/// An audit outcome of [`GrantChange::outcome`] read back: whether it widened, and its part
/// per step. An outcome in another shape (cut short by the audit log's cap on a field, say) is
/// one line as it is.
pub fn grant_steps(outcome: &str) -> (bool, Vec<String>) {
    let (widened, rest) = match (
        outcome.strip_prefix(WIDENED),
        outcome.strip_prefix(NARROWED),
    ) {
        (Some(rest), _) => (true, rest),
        (None, Some(rest)) => (false, rest),
        (None, None) => return (false, vec![outcome.to_owned()]),
    };
    let mut steps = rest.split(STEP_SEPARATOR);
    let first = steps.next().unwrap_or_default().to_owned();
    let lines = std::iter::once(first)
        .chain(steps.map(|s| format!("step `{s}")))
        .collect();
    (widened, lines)
}

/// A changed file, checked, whose plugins are to be loaded.
struct Job {
    file: PathBuf,
    generation: u64,
    workflow: Workflow,
}

impl Workflows {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The version of workflow `name` that runs start on, once its plugins are loaded.
    pub fn prepared(&self, name: &str) -> Option<Arc<Prepared>> {
        self.read().by_name.get(name)?.serving.clone()
    }

    /// Workflow `name` as runs are admitted against it: the version in service, or, before
    /// one is, the version loading.
    pub fn get(&self, name: &str) -> Option<Arc<Workflow>> {
        definition(&self.read(), name)
    }

    /// Every workflow, by name, with where it stands.
    pub fn all(&self) -> Vec<(Arc<Workflow>, Readiness)> {
        let state = self.read();
        state
            .by_name
            .keys()
            .filter_map(|name| Some((definition(&state, name)?, readiness(&state, name)?)))
            .collect()
    }

    /// Workflow `name` with where it stands.
    pub fn with_readiness(&self, name: &str) -> Option<(Arc<Workflow>, Readiness)> {
        let state = self.read();
        Some((definition(&state, name)?, readiness(&state, name)?))
    }

    /// Why a queued run of `name` may not start on this daemon yet: its plugins are still
    /// loading and no version of it is in service. `None` for a workflow this daemon does not
    /// know: such a run starts and ends saying so, as before.
    pub fn hold(&self, name: &str) -> Option<String> {
        let state = self.read();
        let entry = state.by_name.get(name)?;
        (entry.serving.is_none() && entry.loading.is_some()).then(|| COMPILING.to_owned())
    }

    /// Whether every file found at start has loaded or failed to: what `GET /readyz` says.
    pub fn settled(&self) -> bool {
        self.settled.load(Ordering::SeqCst)
    }

    /// How many workflows have no version in service yet, their plugins still loading: what
    /// `GET /readyz` says while the first load goes on.
    pub fn loading(&self) -> usize {
        self.read()
            .by_name
            .values()
            .filter(|e| e.serving.is_none() && e.loading.is_some())
            .count()
    }

    /// The first look at the directories, when the daemon starts: every file is checked
    /// before this returns (so that recovery knows which interrupted runs may resume), and
    /// their plugins load in the background; [`Workflows::settled`] says when they are done.
    pub async fn start(self: &Arc<Self>, runner: &Runner, dirs: &[PathBuf]) {
        let loads = self.reload(runner, dirs).await;
        let workflows = self.clone();
        tokio::spawn(async move {
            for load in loads {
                let _ = load.await;
            }
            workflows.settled.store(true, Ordering::SeqCst);
            tracing::info!("every workflow is loaded; the daemon is ready");
        });
    }

    /// Checks new and changed files from `dirs`, drops the workflows of deleted files, and
    /// loads the plugins of each changed file on a task of its own, whose handle it returns.
    /// A file that does not load is reported and skipped; the last good version of its
    /// workflow stays in service.
    pub async fn reload(
        self: &Arc<Self>,
        runner: &Runner,
        dirs: &[PathBuf],
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let _scanning = self.scanning.lock().await;
        let (files, unreadable) = workflow_files(dirs);
        let changed: Vec<&Found> = {
            let state = self.read();
            files
                .iter()
                .filter(|(file, modified)| {
                    !state
                        .files
                        .get(file)
                        .is_some_and(|s| s.modified == *modified && modified.is_some())
                })
                .collect()
        };
        let mut jobs = Vec::new();
        for (file, modified) in changed {
            let parsed = shiphat_workflow::load(file);
            if let Some(job) = self.begin(file, *modified, parsed) {
                jobs.push(job);
            }
        }
        // A directory that cannot be read now (out of descriptors, a mount gone away) says
        // nothing about its files: its workflows stay in service as last loaded.
        let gone: Vec<PathBuf> = self
            .read()
            .files
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
            self.forget(&file);
        }
        jobs.into_iter()
            .map(|job| {
                let workflows = self.clone();
                let runner = runner.clone();
                tokio::spawn(async move { workflows.load(&runner, job).await })
            })
            .collect()
    }

    /// Notes a changed file as read and checked: a new version loading, or a file that does
    /// not check (the last good version stays).
    fn begin(
        &self,
        file: &Path,
        modified: Option<SystemTime>,
        parsed: shiphat_workflow::Result<Workflow>,
    ) -> Option<Job> {
        let mut state = self.write();
        state.generation += 1;
        let generation = state.generation;
        let previous = state.files.get(file).and_then(|s| s.name.clone());
        state.files.insert(
            file.to_owned(),
            Seen {
                modified,
                name: previous.clone(),
                generation,
            },
        );
        // An older version of this file still loading is overtaken either way.
        for entry in state.by_name.values_mut() {
            if entry.loading.as_ref().is_some_and(|l| l.file == file) {
                entry.loading = None;
            }
        }
        state.by_name.retain(|_, entry| !entry.is_empty());
        match parsed {
            Ok(workflow) => {
                let name = workflow.name.clone();
                state.by_name.entry(name).or_default().loading = Some(Loading {
                    file: file.to_owned(),
                    generation,
                    workflow: Arc::new(workflow.clone()),
                    compiling: Vec::new(),
                });
                Some(Job {
                    file: file.to_owned(),
                    generation,
                    workflow,
                })
            }
            Err(e) => {
                let message = e.to_string();
                skipped(file, &message, previous.as_deref());
                if let Some(entry) = previous.and_then(|name| state.by_name.get_mut(&name)) {
                    entry.error = Some(message);
                }
                None
            }
        }
    }

    /// Loads a checked file's plugins, compiling those the compile cache does not have, and
    /// puts the result in service unless a newer version of the file came meanwhile.
    async fn load(self: Arc<Self>, runner: &Runner, job: Job) {
        let Job {
            file,
            generation,
            workflow,
        } = job;
        let name = workflow.name.clone();
        let on_compile = {
            let workflows = self.clone();
            let name = name.clone();
            CompileHook(Arc::new(move |path: &Path, bytes: usize| {
                workflows.compiling(&name, generation, path, bytes as u64);
            }))
        };
        let result = runner
            .prepare_with(workflow, Some(on_compile))
            .await
            .map_err(|e| e.to_string());
        self.finish(&file, generation, &name, result);
    }

    /// A plugin of the version `generation` of workflow `name` began to compile.
    fn compiling(&self, name: &str, generation: u64, path: &Path, bytes: u64) {
        let plugin = path
            .file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy()
            .into_owned();
        let mut state = self.write();
        let Some(entry) = state.by_name.get_mut(name) else {
            return;
        };
        let meanwhile = if entry.serving.is_some() {
            "the version in service runs its runs meanwhile"
        } else {
            "its runs wait until it is ready"
        };
        if let Some(loading) = entry
            .loading
            .as_mut()
            .filter(|l| l.generation == generation)
            && !loading.compiling.iter().any(|(p, _)| *p == plugin)
        {
            loading.compiling.push((plugin.clone(), bytes));
        }
        drop(state);
        // Said at the level a daemon shows by default, as `shiphat run` says it: a first
        // compile holds the workflow's runs for seconds, and whoever watches the daemon
        // should know why.
        tracing::warn!(
            "workflow `{name}`: compiling `{plugin}` ({}) into the compile cache, first load only; {meanwhile}",
            shiphat_protocol::fmt_size(bytes)
        );
    }

    /// The load of version `generation` of `file` (workflow `name`) ended.
    fn finish(&self, file: &Path, generation: u64, name: &str, result: Result<Prepared, String>) {
        let mut state = self.write();
        let State { by_name, files, .. } = &mut *state;
        let Some(seen) = files.get_mut(file).filter(|s| s.generation == generation) else {
            // The file changed again or went: a newer load, or none, decides.
            return;
        };
        let entry = by_name.entry(name.to_owned()).or_default();
        entry.loading = None;
        match result {
            Ok(prepared) => {
                // Where GitHub's expression rules changed what the file means; said once
                // per load, as `validate` says it.
                for warning in &prepared.workflow.warnings {
                    tracing::warn!("{warning}");
                }
                if let Some(before) = &entry.serving {
                    let diff = shiphat_workflow::grant_diff(&before.workflow, &prepared.workflow);
                    if !diff.is_empty() {
                        self.grant_changes
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(GrantChange {
                                workflow: name.to_owned(),
                                file: file.to_owned(),
                                diff,
                            });
                    }
                }
                entry.serving = Some(Arc::new(prepared));
                entry.error = None;
                if let Some(old) = seen.name.replace(name.to_owned()).filter(|old| old != name)
                    && let Some(old_entry) = by_name.get_mut(&old)
                    && old_entry
                        .serving
                        .as_ref()
                        .is_some_and(|p| p.workflow.file == file)
                {
                    old_entry.serving = None;
                }
                tracing::info!("loaded workflow `{name}` from `{}`", file.display());
                self.changed.notify_one();
            }
            Err(message) => {
                skipped(file, &message, seen.name.as_deref());
                if entry.serving.is_some() {
                    entry.error = Some(message);
                }
            }
        }
        by_name.retain(|_, entry| !entry.is_empty());
    }

    /// The grant changes of the reloads since the last call, oldest first.
    pub fn take_grant_changes(&self) -> Vec<GrantChange> {
        std::mem::take(&mut *self.grant_changes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A file gone from its directory: its workflow leaves service, and a load of it under
    /// way is forgotten.
    fn forget(&self, file: &Path) {
        let mut state = self.write();
        state.files.remove(file);
        for (name, entry) in state.by_name.iter_mut() {
            if entry.loading.as_ref().is_some_and(|l| l.file == file) {
                entry.loading = None;
            }
            if entry
                .serving
                .as_ref()
                .is_some_and(|p| p.workflow.file == file)
            {
                tracing::info!("workflow `{name}` removed with `{}`", file.display());
                entry.serving = None;
            }
        }
        state.by_name.retain(|_, entry| !entry.is_empty());
    }
}

/// The version of `name` runs are admitted against: in service, or else loading.
fn definition(state: &State, name: &str) -> Option<Arc<Workflow>> {
    let entry = state.by_name.get(name)?;
    entry
        .serving
        .as_ref()
        .map(|p| p.workflow.clone())
        .or_else(|| entry.loading.as_ref().map(|l| l.workflow.clone()))
}

fn readiness(state: &State, name: &str) -> Option<Readiness> {
    let entry = state.by_name.get(name)?;
    Some(Readiness {
        ready: entry.serving.is_some(),
        compiling: entry
            .loading
            .as_ref()
            .map(|l| l.compiling.clone())
            .unwrap_or_default(),
        reloading: entry.serving.is_some() && entry.loading.is_some(),
        error: entry.error.clone(),
    })
}

fn skipped(file: &Path, message: &str, previous: Option<&str>) {
    tracing::warn!(
        "skipping `{}`: {message}{}",
        file.display(),
        match previous {
            Some(name) => format!("; the last good `{name}` stays in service"),
            None => String::new(),
        }
    );
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
    fn a_grant_change_reads_back_one_line_per_step() {
        use shiphat_workflow::{GrantDiff, StepChange, StepDiff};
        let change = GrantChange {
            workflow: "deploy".into(),
            file: "deploy.yaml".into(),
            diff: GrantDiff {
                steps: vec![
                    StepDiff {
                        step: "deploy".into(),
                        change: StepChange::Changed,
                        added: vec!["http `hooks.example.com`".into()],
                        removed: vec!["read `build`".into()],
                        plugin: None,
                    },
                    StepDiff {
                        step: "notify".into(),
                        change: StepChange::Added,
                        added: vec!["env `SLACK`".into()],
                        removed: vec![],
                        plugin: None,
                    },
                ],
            },
        };
        let outcome = change.outcome();
        assert_eq!(
            outcome,
            "grants widened: step `deploy`: + http `hooks.example.com`, - read `build`; \
             step `notify` (new step): + env `SLACK`"
        );
        assert_eq!(
            grant_steps(&outcome),
            (
                true,
                vec![
                    "step `deploy`: + http `hooks.example.com`, - read `build`".to_owned(),
                    "step `notify` (new step): + env `SLACK`".to_owned(),
                ]
            )
        );
        // An outcome cut short by the audit log's cap, or of another shape, stays one line.
        assert_eq!(
            grant_steps("reloaded"),
            (false, vec!["reloaded".to_owned()])
        );
    }

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

    /// A runner that finds no plugin: approval steps need none.
    fn runner() -> Runner {
        let host = shiphat_host::Host::new(shiphat_host::HostConfig::default()).unwrap();
        Runner::new(
            host,
            shiphat_runner::PluginPath::new(Vec::new()),
            shiphat_runner::Secrets::none(),
        )
    }

    fn workflow(name: &str, step: &str) -> Workflow {
        let yaml =
            format!("name: {name}\nsteps:\n  - id: {step}\n    approval:\n      message: go?\n");
        shiphat_workflow::parse(&yaml, Path::new("/w/deploy.yaml")).unwrap()
    }

    async fn prepared(name: &str, step: &str) -> Result<Prepared, String> {
        runner()
            .prepare(workflow(name, step))
            .await
            .map_err(|e| e.to_string())
    }

    fn step_of(workflows: &Workflows, name: &str) -> String {
        workflows.get(name).unwrap().steps[0].id.clone()
    }

    const FILE: &str = "/w/deploy.yaml";

    #[tokio::test]
    async fn a_workflow_loading_holds_its_runs_and_a_reload_keeps_the_old_version_serving() {
        let workflows = Workflows::default();
        let file = Path::new(FILE);
        workflows
            .begin(file, None, Ok(workflow("deploy", "v1")))
            .unwrap();
        // Admitted against the file as checked, held until its plugins are loaded.
        assert_eq!(step_of(&workflows, "deploy"), "v1");
        assert_eq!(workflows.hold("deploy").as_deref(), Some(COMPILING));
        assert!(workflows.prepared("deploy").is_none());
        workflows.compiling("deploy", 1, Path::new("/p/notify.wasm"), 19_000_000);
        assert_eq!(workflows.loading(), 1);
        let (_, readiness) = workflows.with_readiness("deploy").unwrap();
        assert_eq!(
            readiness.compiling,
            [("notify.wasm".to_owned(), 19_000_000)]
        );
        assert!(!readiness.ready);
        workflows.finish(file, 1, "deploy", prepared("deploy", "v1").await);
        assert_eq!(workflows.hold("deploy"), None);
        assert!(workflows.prepared("deploy").is_some());
        assert_eq!(workflows.loading(), 0);

        // A changed file loads beside the version in service, which runs start on meanwhile.
        workflows
            .begin(file, None, Ok(workflow("deploy", "v2")))
            .unwrap();
        assert_eq!(workflows.hold("deploy"), None);
        assert_eq!(step_of(&workflows, "deploy"), "v1");
        let (_, readiness) = workflows.with_readiness("deploy").unwrap();
        assert!(readiness.ready && readiness.reloading, "{readiness:?}");
        workflows.finish(file, 2, "deploy", prepared("deploy", "v2").await);
        assert_eq!(step_of(&workflows, "deploy"), "v2");
        assert!(!workflows.with_readiness("deploy").unwrap().1.reloading);
    }

    #[tokio::test]
    async fn a_load_overtaken_by_a_newer_version_of_its_file_is_ignored() {
        // The first version's plugins took longer than the second's: the second serves.
        let workflows = Workflows::default();
        let file = Path::new(FILE);
        workflows.begin(file, None, Ok(workflow("deploy", "v1")));
        workflows.begin(file, None, Ok(workflow("deploy", "v2")));
        workflows.finish(file, 2, "deploy", prepared("deploy", "v2").await);
        workflows.finish(file, 1, "deploy", prepared("deploy", "v1").await);
        assert_eq!(step_of(&workflows, "deploy"), "v2");
    }

    #[tokio::test]
    async fn a_version_that_fails_to_load_leaves_the_last_good_one_serving() {
        let workflows = Workflows::default();
        let file = Path::new(FILE);
        workflows.begin(file, None, Ok(workflow("deploy", "v1")));
        workflows.finish(file, 1, "deploy", prepared("deploy", "v1").await);
        workflows.begin(file, None, Ok(workflow("deploy", "v2")));
        workflows.finish(file, 2, "deploy", Err("plugin `notify` not found".into()));
        assert_eq!(step_of(&workflows, "deploy"), "v1");
        let (_, readiness) = workflows.with_readiness("deploy").unwrap();
        assert!(readiness.ready && !readiness.reloading);
        assert_eq!(
            readiness.error.as_deref(),
            Some("plugin `notify` not found")
        );

        // A file that never loaded is not in service at all, as before.
        let other = Path::new("/w/other.yaml");
        workflows.begin(other, None, Ok(workflow("other", "s")));
        workflows.finish(other, 3, "other", Err("broken".into()));
        assert!(workflows.get("other").is_none());
    }

    #[tokio::test]
    async fn a_renamed_workflow_replaces_its_old_name_once_it_is_ready() {
        let workflows = Workflows::default();
        let file = Path::new(FILE);
        workflows.begin(file, None, Ok(workflow("old", "s")));
        workflows.finish(file, 1, "old", prepared("old", "s").await);
        workflows.begin(file, None, Ok(workflow("new", "s")));
        assert!(workflows.prepared("old").is_some());
        workflows.finish(file, 2, "new", prepared("new", "s").await);
        assert!(workflows.get("old").is_none());
        assert!(workflows.prepared("new").is_some());

        // A deleted file takes its workflow out of service, and a load under way with it.
        workflows.begin(file, None, Ok(workflow("new", "t")));
        workflows.forget(file);
        assert!(workflows.get("new").is_none());
        workflows.finish(file, 3, "new", prepared("new", "t").await);
        assert!(workflows.get("new").is_none());
    }
}
