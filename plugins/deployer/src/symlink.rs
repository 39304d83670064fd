//! `strategy: symlink`: Capistrano-style releases under a target directory.
//!
//! ```text
//! <target>/releases/1/                       a release, with .shiphat-release.json
//! <target>/releases/2/
//! <target>/releases/.3.partial-<run id>/     a release being written (never current)
//! <target>/current -> releases/2             relative, switched by rename
//! <target>/.shiphat-history                  each release that went live, oldest first
//! ```
//!
//! The history is Capistrano's `revisions.log`: a rollback without `release:` returns to the
//! release that was live before the current one went live, which is not always the one
//! deployed before it by time (deploy 1, 2, 1 again, then 3: a rollback goes back to 1).
//!
//! Every change that a reader of `current` could see is a rename, which is atomic: a release
//! directory appears whole, and `current` flips from one whole release to another.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use shiphat_plugin_sdk::{self as sdk, Output, StepContext, StepError, StepOutput};

use crate::config::{Symlink, SymlinkAction, check_release_name};
use crate::files::{self, Source};
use crate::lock::Lock;

/// The manifest each release directory holds.
const MANIFEST: &str = ".shiphat-release.json";

/// Where a partial release's name starts after the leading `.` and the release name.
const PARTIAL: &str = ".partial-";

/// The temporary link's prefix, next to `current`.
const CURRENT_TMP: &str = "current.tmp-";

/// The history of what went live, one line per switch: `release<TAB>run id<TAB>time<TAB>how`.
const HISTORY: &str = ".shiphat-history";

/// How many switches the history keeps. Rollbacks walk back through it, and nobody rolls
/// back further than this; old lines would only grow the file.
const HISTORY_LIMIT: usize = 200;

/// What `.shiphat-release.json` holds.
#[derive(Serialize, Deserialize)]
struct Manifest {
    release: String,
    run_id: String,
    /// See `files::digest` for exactly what is hashed.
    source_digest: String,
    /// When the release was first deployed, RFC 3339 UTC with milliseconds. Releases are
    /// ordered by it (the fixed format sorts as text).
    time: String,
    files: u64,
}

pub fn run(ctx: &StepContext, config: Symlink) -> Result<StepOutput, StepError> {
    let layout = Layout::new(&config.target, config.durable);
    let lock = |layout: &Layout| -> Result<Option<Lock>, StepError> {
        // A dry run writes nothing, not even a lock.
        if ctx.dry_run {
            return Ok(None);
        }
        Lock::take(ctx, &layout.target, config.wait_for_lock).map(Some)
    };
    match config.action {
        SymlinkAction::Deploy {
            release,
            source,
            keep,
        } => deploy(ctx, &release, &source, layout, keep, lock),
        SymlinkAction::Rollback { release } => rollback(ctx, release, layout, lock),
    }
}

/// The paths under one target.
struct Layout {
    target: PathBuf,
    releases: PathBuf,
    current: PathBuf,
    history: PathBuf,
    /// Whether to `fsync` what is written, so that it survives a power cut.
    durable: bool,
}

impl Layout {
    fn new(target: &str, durable: bool) -> Layout {
        let target = PathBuf::from(target);
        Layout {
            releases: target.join("releases"),
            current: target.join("current"),
            history: target.join(HISTORY),
            target,
            durable,
        }
    }

    /// Writes `text` to the new file `path`, `fsync`ed when durable.
    fn write(&self, path: &Path, text: &str) -> io::Result<()> {
        let mut file = File::create(path)?;
        file.write_all(text.as_bytes())?;
        if self.durable {
            file.sync_all()?;
        }
        Ok(())
    }

    /// `fsync`s the directory `dir` when durable, so a rename or creation in it is on disk.
    fn sync_dir(&self, dir: &Path) -> Result<(), StepError> {
        if !self.durable {
            return Ok(());
        }
        files::sync_dir(dir).map_err(|e| io_failed(dir, e))
    }

    fn release(&self, name: &str) -> PathBuf {
        self.releases.join(name)
    }

    /// What `current` holds, relative to the target: `releases/<name>`.
    fn link_text(name: &str) -> PathBuf {
        Path::new("releases").join(name)
    }

    /// The release `current` points at, or `None` when there is no `current` yet.
    fn current(&self) -> Result<Option<String>, StepError> {
        let link = match fs::read_link(&self.current) {
            Ok(link) => link,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(sdk::failed(format!(
                    "`{}` exists but is not a symlink ({}); move it away so the deployer can manage it",
                    self.current.display(),
                    sdk::io_error(&e)
                )));
            }
        };
        let text = link.to_string_lossy();
        let name = text
            .trim_end_matches('/')
            .strip_prefix("releases/")
            .filter(|name| check_release_name(name).is_ok());
        match name {
            Some(name) => Ok(Some(name.to_string())),
            None => Err(sdk::failed(format!(
                "`{}` points at `{text}`, not at `releases/<release>`; fix or remove it",
                self.current.display()
            ))),
        }
    }

    /// Points `current` at release `name`: a new link under a temporary name, renamed over
    /// `current`, so that `current` is never missing nor half-written. When durable, the
    /// target is synced after the rename, so the switch survives a power cut.
    fn switch(&self, ctx: &StepContext, name: &str) -> Result<(), StepError> {
        let tmp = self.target.join(format!("{CURRENT_TMP}{}", ctx.run_id));
        // A link left by an earlier attempt of this run.
        let _ = fs::remove_file(&tmp);
        files::make_symlink(&Self::link_text(name), &tmp)
            .and_then(|()| fs::rename(&tmp, &self.current))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                sdk::failed(format!(
                    "cannot point `{}` at release `{name}`: {}",
                    self.current.display(),
                    sdk::io_error(&e)
                ))
            })?;
        self.sync_dir(&self.target)
    }

    /// The history's lines, oldest first, ending with `current` when there is one. A
    /// history that lost its last switch (the step died between the switch and the write),
    /// or a target deployed before the history existed, gets a line for `current` added.
    fn history(&self, current: Option<&str>) -> Result<Vec<String>, StepError> {
        let mut lines: Vec<String> = match fs::read_to_string(&self.history) {
            Ok(text) => text
                .lines()
                .filter(|line| check_release_name(history_name(line)).is_ok())
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_failed(&self.history, e)),
        };
        if let Some(current) = current
            && lines.last().map(|line| history_name(line)) != Some(current)
        {
            lines.push(format!("{current}\t\t\tfound live"));
        }
        Ok(lines)
    }

    /// The release that was live before `current` went live and still exists; falls back to
    /// the release deployed before it by time when the history does not know.
    fn previous_live(&self, current: &str) -> Result<Option<String>, StepError> {
        let history = self.history(Some(current))?;
        let from_history = history
            .iter()
            .rev()
            .map(|line| history_name(line))
            .find(|name| *name != current && self.release(name).is_dir())
            .map(str::to_owned);
        match from_history {
            Some(name) => Ok(Some(name)),
            None => self.before(current),
        }
    }

    /// Writes the history as `lines` plus one for `name`, by a temporary file renamed over
    /// the old one.
    fn record(
        &self,
        ctx: &StepContext,
        mut lines: Vec<String>,
        name: &str,
        how: &str,
    ) -> Result<(), StepError> {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        lines.push(format!("{name}\t{}\t{time}\t{how}", ctx.run_id));
        let skip = lines.len().saturating_sub(HISTORY_LIMIT);
        let text: String = lines[skip..].iter().map(|l| format!("{l}\n")).collect();
        let tmp = self.target.join(format!("{HISTORY}.tmp-{}", ctx.run_id));
        self.write(&tmp, &text)
            .and_then(|()| fs::rename(&tmp, &self.history))
            .map_err(|e| {
                let _ = fs::remove_file(&tmp);
                io_failed(&self.history, e)
            })?;
        self.sync_dir(&self.target)
    }

    /// The complete releases with a readable manifest, oldest first.
    fn releases(&self) -> Result<Vec<(String, Manifest)>, StepError> {
        let entries = match fs::read_dir(&self.releases) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_failed(&self.releases, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_failed(&self.releases, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match read_manifest(&self.release(&name)) {
                Ok(manifest) => out.push((name, manifest)),
                Err(e) => sdk::warn(&format!(
                    "release `{name}` has no readable {MANIFEST} ({e}); it is left alone and out of the release order"
                )),
            }
        }
        out.sort_by(|(a, ma), (b, mb)| ma.time.cmp(&mb.time).then_with(|| a.cmp(b)));
        Ok(out)
    }

    /// How many directories `releases/` holds, partial ones aside: at least as many as
    /// [`Layout::releases`] lists, without reading a manifest.
    fn release_dirs(&self) -> Result<usize, StepError> {
        match fs::read_dir(&self.releases) {
            Ok(entries) => Ok(entries
                .flatten()
                .filter(|e| {
                    !e.file_name().to_string_lossy().starts_with('.')
                        && e.file_type().is_ok_and(|t| t.is_dir())
                })
                .count()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io_failed(&self.releases, e)),
        }
    }

    /// The release deployed just before `name`, by manifest time.
    fn before(&self, name: &str) -> Result<Option<String>, StepError> {
        let releases = self.releases()?;
        let at = releases.iter().position(|(n, _)| n == name);
        Ok(at
            .and_then(|i| i.checked_sub(1))
            .map(|i| releases[i].0.clone()))
    }

    /// Removes what a deploy that died left behind: partial releases and temporary links.
    fn clean_leftovers(&self) -> Result<(), StepError> {
        for (dir, is_leftover) in [
            (
                &self.releases,
                &(|n: &str| n.starts_with('.') && n.contains(PARTIAL)) as &dyn Fn(&str) -> bool,
            ),
            (&self.target, &|n: &str| {
                n.starts_with(CURRENT_TMP) || (n.starts_with(HISTORY) && n.contains(".tmp-"))
            }),
        ] {
            let entries = match fs::read_dir(dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_failed(dir, e)),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !is_leftover(&name) {
                    continue;
                }
                let path = entry.path();
                let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    fs::remove_dir_all(&path)
                } else {
                    fs::remove_file(&path)
                };
                removed.map_err(|e| io_failed(&path, e))?;
                sdk::info(&format!(
                    "removed `{}`, left by a deploy that did not finish",
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

fn deploy(
    ctx: &StepContext,
    release: &str,
    source: &str,
    layout: Layout,
    keep: u32,
    lock: impl FnOnce(&Layout) -> Result<Option<Lock>, StepError>,
) -> Result<StepOutput, StepError> {
    let source = Source::open(source).map_err(sdk::invalid_config)?;
    // Before anything is copied, and in a dry run too: a missing grant fails here.
    files::check_writable(&layout.target).map_err(sdk::failed)?;
    if !ctx.dry_run {
        fs::create_dir_all(&layout.target).map_err(|e| io_failed(&layout.target, e))?;
    }
    // Held until this function returns, however it returns: everything from reading `current`
    // to pruning is one deploy that no other may interleave with.
    let _lock = lock(&layout)?;
    let previous = layout.current()?;
    let path = layout.release(release);
    let output = |summary: String, previous: Option<String>, changed: bool| {
        Output::new(summary)
            .set("release", release)
            .set("previous_release", previous)
            .set("path", path.to_string_lossy().into_owned())
            .set("changed", changed)
    };

    if previous.as_deref() == Some(release) {
        let before = layout.previous_live(release)?;
        return Ok(output(
            format!("release {release} is already current; nothing changed"),
            before,
            false,
        )
        .into());
    }
    let over = match &previous {
        Some(p) => format!(" over {p}"),
        None => " as the first release".to_string(),
    };
    let exists = path.is_dir();

    if ctx.dry_run {
        let summary = if exists {
            format!("would switch to the existing release {release}{over}")
        } else {
            let n = source.count().map_err(|e| {
                sdk::failed(format!("cannot read the source: {}", sdk::io_error(&e)))
            })?;
            format!("would deploy {release}{over} (copy {n} files)")
        };
        return Ok(output(summary, previous, false).set("dry_run", true).into());
    }

    layout.clean_leftovers()?;
    fs::create_dir_all(&layout.releases).map_err(|e| io_failed(&layout.releases, e))?;
    let partial = layout
        .releases
        .join(format!(".{release}{PARTIAL}{}", ctx.run_id));
    let (count, digest) = source.put(&partial).map_err(|e| {
        let _ = fs::remove_dir_all(&partial);
        sdk::failed(e)
    })?;

    let summary = if exists {
        // A release name is immutable: the same name with other contents is a mistake.
        fs::remove_dir_all(&partial).map_err(|e| io_failed(&partial, e))?;
        let existing = read_manifest(&path).map_err(|e| {
            sdk::failed(format!(
                "release `{release}` already exists without a readable manifest ({e}); deploy under a new release name"
            ))
        })?;
        if existing.source_digest != digest {
            return Err(sdk::failed(format!(
                "release `{release}` already exists with other contents (digest {} there, {} here); deploy under a new release name",
                short(&existing.source_digest),
                short(&digest)
            )));
        }
        layout.switch(ctx, release)?;
        format!("switched to the existing release {release}{over} (same contents)")
    } else {
        let manifest = Manifest {
            release: release.to_string(),
            run_id: ctx.run_id.clone(),
            source_digest: digest.clone(),
            time: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            files: count,
        };
        let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes");
        let manifest_path = partial.join(MANIFEST);
        // Synced with the rest of the release just below.
        fs::write(&manifest_path, text + "\n").map_err(|e| io_failed(&manifest_path, e))?;
        // The files and the directories' entries must be on disk before the release gets
        // its name, or a power cut could leave `releases/<release>` half empty.
        if layout.durable {
            files::sync_tree(&partial).map_err(|e| io_failed(&partial, e))?;
        }
        fs::rename(&partial, &path).map_err(|e| io_failed(&path, e))?;
        // The release's name, and `releases/` itself on a first deploy, before `current`
        // may point at it.
        layout.sync_dir(&layout.releases)?;
        layout.sync_dir(&layout.target)?;
        layout.switch(ctx, release)?;
        format!(
            "deployed {release}{over} ({count} files, sha256 {})",
            short(&digest)
        )
    };
    let history = layout.history(previous.as_deref())?;
    layout.record(ctx, history, release, "deploy")?;
    sdk::info(&summary);
    prune(&layout, keep, release, previous.as_deref())?;
    Ok(output(summary, previous, true)
        .set("source_digest", digest)
        .into())
}

/// Deletes the oldest releases beyond `keep`, never `current` nor `previous`.
fn prune(
    layout: &Layout,
    keep: u32,
    current: &str,
    previous: Option<&str>,
) -> Result<(), StepError> {
    // Reading every release's manifest costs a file read each; a target holding no more
    // release directories than `keep` has nothing to prune, whatever the manifests say.
    if layout.release_dirs()? <= keep as usize {
        return Ok(());
    }
    let releases = layout.releases()?;
    let excess = releases.len().saturating_sub(keep as usize);
    for (name, _) in releases.iter().take(excess) {
        if name == current || Some(name.as_str()) == previous {
            continue;
        }
        let path = layout.release(name);
        fs::remove_dir_all(&path).map_err(|e| io_failed(&path, e))?;
        sdk::info(&format!("removed release {name} (keep: {keep})"));
    }
    Ok(())
}

fn rollback(
    ctx: &StepContext,
    release: Option<String>,
    layout: Layout,
    lock: impl FnOnce(&Layout) -> Result<Option<Lock>, StepError>,
) -> Result<StepOutput, StepError> {
    files::check_writable(&layout.target).map_err(sdk::failed)?;
    // A target that does not exist has nothing to roll back, which `current` says below.
    let _lock = if layout.target.is_dir() {
        lock(&layout)?
    } else {
        None
    };
    let Some(current) = layout.current()? else {
        return Err(sdk::failed(format!(
            "nothing to roll back: `{}` does not exist",
            layout.current.display()
        )));
    };
    let to = match release {
        Some(name) => {
            if !layout.release(&name).is_dir() {
                return Err(sdk::failed(format!(
                    "cannot roll back to release `{name}`: `{}` does not exist",
                    layout.release(&name).display()
                )));
            }
            name
        }
        None => layout.previous_live(&current)?.ok_or_else(|| {
            sdk::failed(format!(
                "nothing to roll back to: no release was live before `{current}`"
            ))
        })?,
    };
    let path = layout.release(&to).to_string_lossy().into_owned();
    let output = |summary: String, changed: bool| {
        Output::new(summary)
            .set("release", to.as_str())
            .set("previous_release", current.as_str())
            .set("path", path.as_str())
            .set("changed", changed)
    };
    if to == current {
        return Ok(output(
            format!("release {to} is already current; nothing changed"),
            false,
        )
        .into());
    }
    // A release unpacked by an older deployer may hold a symlink out of the release; going
    // back to it would put that symlink behind `current` again.
    files::check_links(&layout.release(&to)).map_err(sdk::failed)?;
    if ctx.dry_run {
        return Ok(
            output(format!("would roll back from {current} to {to}"), false)
                .set("dry_run", true)
                .into(),
        );
    }
    layout.switch(ctx, &to)?;
    // A rollback pops the history back to `to`, so the next rollback goes one further back;
    // a rollback to a release that was not in it adds it.
    let mut history = layout.history(Some(&current))?;
    if let Some(at) = history.iter().rposition(|line| history_name(line) == to) {
        history.truncate(at);
    }
    layout.record(ctx, history, &to, "rollback")?;
    let summary = format!("rolled back from {current} to {to}");
    sdk::info(&summary);
    Ok(output(summary, true).into())
}

/// The release a history line names.
fn history_name(line: &str) -> &str {
    line.split('\t').next().unwrap_or_default()
}

fn read_manifest(release_dir: &Path) -> Result<Manifest, String> {
    let text = fs::read_to_string(release_dir.join(MANIFEST)).map_err(|e| sdk::io_error(&e))?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn io_failed(path: &Path, e: io::Error) -> StepError {
    sdk::failed(format!("`{}` {}", path.display(), sdk::io_error(&e)))
}

/// The first 12 hex digits of a digest, enough to tell releases apart in a summary.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}
