//! `shiphat plugin push`, `pull` and `lock`: plugins in OCI registries (engine/oci).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use shiphat_oci::{
    CREATED, ComponentInfo, DESCRIPTION, Entry, Fetched, Lock, OciRef, TITLE, VERSION,
};
use shiphat_workflow::{PluginRef, Workflow};

use crate::{EngineArgs, Invalid, exit};

#[derive(clap::Args)]
pub struct PushArgs {
    /// The component to publish.
    file: PathBuf,
    /// Where: `oci://REGISTRY/REPOSITORY:TAG`.
    #[arg(value_name = "oci://REGISTRY/REPOSITORY:TAG")]
    reference: String,
    /// An extra manifest annotation, `KEY=VALUE` (e.g.
    /// `org.opencontainers.image.source=https://…`); repeat for several.
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    annotations: Vec<String>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
pub struct PullArgs {
    /// `oci://REGISTRY/REPOSITORY:TAG`, `…@sha256:DIGEST`, or both.
    #[arg(value_name = "oci://REGISTRY/REPOSITORY:TAG")]
    reference: String,
    /// Also write the component to this file.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

#[derive(clap::Args)]
pub struct LockArgs {
    /// Workflow files, or directories of them [default: `workflows`]. Each directory gets one
    /// `shiphat.lock` pinning the `oci://` plugins of all its workflows.
    #[arg(value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    engine: EngineArgs,
}

fn parse(text: &str) -> anyhow::Result<OciRef> {
    Ok(OciRef::parse(text).map_err(Invalid)?)
}

pub async fn push(args: &PushArgs) -> anyhow::Result<u8> {
    let r = parse(&args.reference)?;
    if r.tag.is_none() {
        return Err(Invalid(format!(
            "`{r}` has no tag; push to a tag (`oci://{}/{}:1.0.0`), and the digest is printed",
            r.registry, r.repository
        ))
        .into());
    }
    if r.digest.is_some() {
        return Err(Invalid(format!(
            "`{r}` names a digest; a push makes the digest, so name only the tag"
        ))
        .into());
    }
    let runner = args.engine.runner()?;
    let host = runner.host();
    let bytes = std::fs::read(&args.file)
        .with_context(|| format!("cannot read `{}`", args.file.display()))?;
    let plugin = host
        .load(&args.file, None, shiphat_workflow::DEFAULT_STACK)
        .map_err(|e| Invalid(e.to_string()))?;
    let info = host
        .describe(&plugin)
        .await
        .map_err(|e| Invalid(e.to_string()))?;
    let (imports, exports) = plugin.interface(host);
    let mut annotations = BTreeMap::from([
        (TITLE.to_owned(), info.name.clone()),
        (VERSION.to_owned(), info.version.clone()),
        (DESCRIPTION.to_owned(), info.description.clone()),
        (
            CREATED.to_owned(),
            humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ),
    ]);
    for pair in &args.annotations {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| Invalid(format!("`--annotation {pair}`: write it as `KEY=VALUE`")))?;
        annotations.insert(key.to_owned(), value.to_owned());
    }
    let registry = args.engine.registry()?;
    let info_for_config = ComponentInfo {
        exports,
        imports,
        target: None,
    };
    let size = bytes.len();
    let digest = registry
        .push(&r, bytes, info_for_config, annotations)
        .await
        .map_err(|e| Invalid(e.to_string()))?;
    outln!(
        "pushed {} {} ({}) to {}",
        info.name,
        info.version,
        shiphat_protocol::fmt_size(size as u64),
        r.pinned(&digest)
    );
    Ok(exit::OK)
}

pub async fn pull(args: &PullArgs) -> anyhow::Result<u8> {
    let r = parse(&args.reference)?;
    let registry = args.engine.registry()?;
    let fetched = registry
        .fetch(&r)
        .await
        .map_err(|e| Invalid(e.to_string()))?;
    let info = describe(&args.engine, &fetched).await?;
    let name = format!("{} {}", info.name, info.version);
    if let Some(out) = &args.output {
        std::fs::copy(&fetched.path, out)
            .with_context(|| format!("cannot write `{}`", out.display()))?;
    }
    outln!(
        "pulled {name} ({}) {}",
        shiphat_protocol::fmt_size(fetched.size),
        fetched.reference
    );
    outln!("component {}", fetched.component_digest());
    Ok(exit::OK)
}

/// The workflow files `paths` name, grouped by directory (one lock file each).
fn workflow_files(paths: &[PathBuf]) -> anyhow::Result<BTreeMap<PathBuf, Vec<PathBuf>>> {
    let default = [PathBuf::from("workflows")];
    let paths = if paths.is_empty() {
        &default[..]
    } else {
        paths
    };
    let mut dirs: BTreeMap<PathBuf, Vec<PathBuf>> = BTreeMap::new();
    for path in paths {
        let dir = if path.is_dir() {
            path.clone()
        } else if path.is_file() {
            path.parent().map_or(PathBuf::from("."), Path::to_owned)
        } else {
            return Err(Invalid(format!(
                "`{}` is neither a workflow file nor a directory of them",
                path.display()
            ))
            .into());
        };
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read `{}`", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        dirs.insert(dir, files);
    }
    Ok(dirs)
}

/// A step's grants, in a line: what a reviewer of a new version should weigh.
fn grants(workflow: &Workflow, r: &OciRef) -> Vec<String> {
    let mut lines = Vec::new();
    for step in workflow.all_steps() {
        if !matches!(step.kind.plugin(), Some(PluginRef::Oci(x)) if x.unpinned() == r.unpinned()) {
            continue;
        }
        let granted = shiphat_workflow::grant_lines(step);
        let what = if granted.is_empty() {
            "nothing".to_owned()
        } else {
            granted.into_iter().collect::<Vec<_>>().join(", ")
        };
        lines.push(format!(
            "{} step `{}` grants it: {what}",
            workflow.file.display(),
            step.id
        ));
    }
    lines
}

/// The keys of a JSON Schema's `properties`, with their types, for a before/after diff.
fn schema_keys(schema: &str) -> BTreeMap<String, String> {
    let value: serde_json::Value = serde_json::from_str(schema).unwrap_or_default();
    value["properties"]
        .as_object()
        .map(|p| {
            p.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v["type"].to_string().trim_matches('"').to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Loads a fetched plugin (compiling it into the compile cache, so that no deploy compiles
/// it) and returns what its `describe()` says: name, version and config schema.
async fn describe(
    engine: &EngineArgs,
    fetched: &Fetched,
) -> anyhow::Result<shiphat_host::PluginInfo> {
    let runner = engine.runner()?;
    let host = runner.host();
    let plugin = host
        .load(
            &fetched.path,
            Some(fetched.component),
            shiphat_workflow::DEFAULT_STACK,
        )
        .map_err(|e| Invalid(format!("`{}`: {e}", fetched.reference)))?;
    Ok(host
        .describe(&plugin)
        .await
        .map_err(|e| Invalid(format!("`{}`: {e}", fetched.reference)))?)
}

pub async fn lock(args: &LockArgs) -> anyhow::Result<u8> {
    let registry = args.engine.registry()?;
    for (dir, files) in workflow_files(&args.paths)? {
        let lock_path = dir.join(shiphat_oci::lock::FILE);
        let old = Lock::read(&lock_path).map_err(|e| Invalid(e.to_string()))?;
        let mut new = Lock::empty(lock_path.clone());
        let mut workflows = Vec::new();
        for file in &files {
            let workflow = shiphat_workflow::load(file).map_err(|e| Invalid(e.to_string()))?;
            workflows.push(workflow);
        }
        let refs: std::collections::BTreeSet<OciRef> = workflows
            .iter()
            .flat_map(|w| w.all_steps())
            .filter_map(|s| match s.kind.plugin() {
                // A reference with a digest is pinned by the workflow itself; the lock is for
                // the tags it leaves free to move. (A digest-only one once went in as a
                // reference with neither, which the next read of the lock refused.)
                Some(PluginRef::Oci(r)) if r.digest.is_none() => Some(r.clone()),
                _ => None,
            })
            .collect();
        let mut changes = 0;
        for r in &refs {
            let fetched = registry
                .fetch(r)
                .await
                .map_err(|e| Invalid(e.to_string()))?;
            let info = describe(&args.engine, &fetched).await?;
            let digest = fetched.reference.digest.clone().expect("fetched by digest");
            let entry = Entry {
                reference: r.unpinned().to_string(),
                digest: digest.clone(),
                component: fetched.component_digest(),
                name: info.name.clone(),
                version: info.version.clone(),
            };
            match old.get(r) {
                Some(before) if before.digest == digest => {}
                before => {
                    changes += 1;
                    let was = before.map_or("(new)".to_owned(), |b| b.digest.clone());
                    outln!("{}: {was} → {digest}", r.unpinned());
                    if let Some(before) = before {
                        if before.name != info.name {
                            outln!("  plugin: {} → {}", before.name, info.name);
                        }
                        if before.version != info.version {
                            outln!("  version: {} → {}", before.version, info.version);
                        }
                        // The old version's schema, when its blobs are still cached.
                        let old_ref = r.pinned(&before.digest);
                        if let Ok(Some(old_fetched)) = registry.cached(&old_ref)
                            && let Ok(old_info) = describe(&args.engine, &old_fetched).await
                        {
                            let (a, b) = (
                                schema_keys(&old_info.config_schema),
                                schema_keys(&info.config_schema),
                            );
                            for (k, t) in &b {
                                match a.get(k) {
                                    None => outln!("  config: + `{k}` ({t})"),
                                    Some(old) if old != t => outln!("  config: `{k}` {old} → {t}"),
                                    _ => {}
                                }
                            }
                            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                                outln!("  config: - `{k}`");
                            }
                        }
                    } else {
                        outln!("  {} {}", info.name, info.version);
                    }
                    for line in workflows.iter().flat_map(|w| grants(w, r)) {
                        outln!("  {line}");
                    }
                }
            }
            new.set(entry);
        }
        for gone in old
            .entries()
            .filter(|e| OciRef::parse(&e.reference).is_ok_and(|r| new.get(&r).is_none()))
        {
            changes += 1;
            outln!("{}: no longer used; unpinned", gone.reference);
        }
        if refs.is_empty() && !lock_path.exists() {
            outln!(
                "{}: no `oci://` plugins; no lock file needed",
                dir.display()
            );
            continue;
        }
        new.write().map_err(|e| Invalid(e.to_string()))?;
        outln!(
            "{}: {} plugin(s) pinned, {changes} change(s)",
            lock_path.display(),
            refs.len()
        );
    }
    Ok(exit::OK)
}
