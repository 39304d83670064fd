//! Putting a build into a release directory, and digesting what is there.
//!
//! Paths are the strings the workflow wrote (`build`, `site/releases/2`): WASI resolves them
//! against the step's preopened directories, so nothing here can reach past a grant.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use shiphat_plugin_sdk::bindings::wasi::filesystem::preopens;

/// How many bytes are read at a time while digesting.
const CHUNK: usize = 64 * 1024;

/// Where a release comes from.
pub enum Source {
    Dir(PathBuf),
    Tarball(PathBuf),
}

impl Source {
    /// Tells a directory from a `.tar.gz` by looking at `path`; `Err` says why it is neither.
    pub fn open(path: &str) -> Result<Source, String> {
        let meta = fs::metadata(path).map_err(|e| {
            format!("`source`: cannot read `{path}`: {e}; is its directory granted by allow.read?")
        })?;
        if meta.is_dir() {
            Ok(Source::Dir(path.into()))
        } else if path.ends_with(".tar.gz") || path.ends_with(".tgz") {
            Ok(Source::Tarball(path.into()))
        } else {
            Err(format!(
                "`source`: `{path}` is neither a directory nor a `.tar.gz`/`.tgz` file"
            ))
        }
    }

    /// How many files (and symlinks) the release will hold, without writing anything.
    pub fn count(&self) -> io::Result<u64> {
        match self {
            Source::Dir(dir) => {
                let mut n = 0;
                walk(dir, Path::new(""), &mut |_, kind| {
                    if kind != Kind::Dir {
                        n += 1;
                    }
                    Ok(())
                })?;
                Ok(n)
            }
            Source::Tarball(file) => {
                let mut archive = tar::Archive::new(GzDecoder::new(File::open(file)?));
                let mut n = 0;
                for entry in archive.entries()? {
                    let kind = entry?.header().entry_type();
                    if kind.is_file() || kind.is_symlink() {
                        n += 1;
                    }
                }
                Ok(n)
            }
        }
    }

    /// Writes the release's files under `dest`, which must not exist yet; returns how many
    /// files (and symlinks) it wrote and their digest (see [`digest`]).
    pub fn put(&self, dest: &Path) -> Result<(u64, String), String> {
        fs::create_dir(dest).map_err(|e| format!("cannot create `{}`: {e}", dest.display()))?;
        match self {
            Source::Dir(dir) => tree(dir, Some(dest))
                .map_err(|e| format!("copying `{}` failed: {e}", dir.display())),
            Source::Tarball(file) => {
                let count = unpack(file, dest)?;
                // Archive order is not path order: digest what was written.
                let digest = digest(dest)
                    .map_err(|e| format!("reading back `{}` failed: {e}", dest.display()))?;
                Ok((count, digest))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink,
}

/// Calls `visit` for everything under `root`, parents before children, with the path relative
/// to `root`. Symlinks are reported, never followed.
fn walk(
    root: &Path,
    rel: &Path,
    visit: &mut dyn FnMut(&Path, Kind) -> io::Result<()>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = rel.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            visit(&rel, Kind::Symlink)?;
        } else if kind.is_dir() {
            visit(&rel, Kind::Dir)?;
            walk(root, &rel, visit)?;
        } else if kind.is_file() {
            visit(&rel, Kind::File)?;
        }
    }
    Ok(())
}

fn unpack(file: &Path, dest: &Path) -> Result<u64, String> {
    let fail = |e: io::Error| format!("unpacking `{}` failed: {e}", file.display());
    let gz = File::open(file).map_err(fail)?;
    let mut archive = tar::Archive::new(GzDecoder::new(gz));
    let mut n = 0;
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let name = entry.path().map_err(fail)?.into_owned();
        let Some(rel) = inside(&name) else {
            return Err(format!(
                "`{}` holds `{}`, which points outside the release; refusing to unpack it",
                file.display(),
                name.display()
            ));
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let dst = dest.join(&rel);
        // An earlier entry may have planted a symlink where a later one puts a file; writing
        // through it would land outside the release.
        no_symlink_above(dest, &rel).map_err(|e| format!("`{}`: {e}", file.display()))?;
        let kind = entry.header().entry_type();
        let result = if kind.is_dir() {
            fs::create_dir_all(&dst)
        } else if kind.is_file() {
            n += 1;
            create_parent(&dst).and_then(|()| {
                let mut out = File::create(&dst)?;
                io::copy(&mut entry, &mut out).map(drop)
            })
        } else if kind.is_symlink() {
            n += 1;
            match entry.link_name().map_err(fail)? {
                Some(target) => {
                    check_link(&rel, &target).map_err(|e| format!("`{}` {e}", file.display()))?;
                    create_parent(&dst).and_then(|()| make_symlink(&target, &dst))
                }
                None => Err(io::Error::other("a symlink entry without a target")),
            }
        } else if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            Ok(())
        } else {
            return Err(format!(
                "`{}` holds `{}` of type {kind:?}; only files, directories and symlinks can be deployed",
                file.display(),
                name.display()
            ));
        };
        result.map_err(|e| format!("unpacking `{}` failed: {e}", name.display()))?;
    }
    Ok(n)
}

/// Refuses a symlink at `rel` (relative to the release) whose `target` leads out of the
/// release: an absolute target, or more leading `..` than the link has directories above
/// it. A `..` after a name is refused too: the name may itself be a symlink to a shallower
/// directory, so the `..` cannot be checked by looking at the text. A later step granted a
/// path through such a link would otherwise reach outside every grant.
fn check_link(rel: &Path, target: &Path) -> Result<(), String> {
    let escapes = |why: &str| {
        format!(
            "holds the symlink `{}` -> `{}`, which {why}; refusing to deploy it",
            slash_path(rel),
            target.display()
        )
    };
    let mut depth = rel.components().count().saturating_sub(1);
    let mut named = false;
    for part in target.components() {
        match part {
            Component::CurDir => {}
            Component::Normal(_) => named = true,
            Component::ParentDir if named => {
                return Err(escapes("has `..` after a name"));
            }
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return Err(escapes("points outside the release")),
            },
            Component::RootDir | Component::Prefix(_) => {
                return Err(escapes("points at an absolute path outside the release"));
            }
        }
    }
    Ok(())
}

/// Checks every symlink already under `root` with the rule of [`check_link`].
pub fn check_links(root: &Path) -> Result<(), String> {
    let mut bad = None;
    walk(root, Path::new(""), &mut |rel, kind| {
        if kind == Kind::Symlink && bad.is_none() {
            let target = fs::read_link(root.join(rel))?;
            bad = check_link(rel, &target).err();
        }
        Ok(())
    })
    .map_err(|e| format!("cannot read `{}`: {e}", root.display()))?;
    match bad {
        Some(e) => Err(format!("`{}` {e}", root.display())),
        None => Ok(()),
    }
}

/// `path` without `.` components, if it stays inside the directory it is relative to.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn no_symlink_above(root: &Path, rel: &Path) -> Result<(), String> {
    let mut at = root.to_path_buf();
    let mut parts = rel.components().peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            break;
        }
        at.push(part);
        if fs::symlink_metadata(&at).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!(
                "`{}` would be written through the symlink `{}`; refusing",
                rel.display(),
                at.strip_prefix(root).unwrap_or(&at).display()
            ));
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(parent) => fs::create_dir_all(parent),
        None => Ok(()),
    }
}

/// Creates the symlink `link` holding `target`, which must be relative: WASI refuses absolute
/// ones, and they would point outside the sandbox anyway.
///
/// Stable Rust has no symlink function for WASI (`std::os::wasi::fs::symlink_path` is
/// unstable), so this calls `wasi:filesystem`'s `symlink-at` on the preopened directory that
/// holds `link`, found by its guest name as `std` itself resolves paths.
pub fn make_symlink(target: &Path, link: &Path) -> io::Result<()> {
    if target.is_absolute() {
        return Err(io::Error::other(format!(
            "symlink `{}` points at the absolute path `{}`; only relative symlinks can be deployed",
            link.display(),
            target.display()
        )));
    }
    let link = inside(link).ok_or_else(|| io::Error::other("the link path leaves its grant"))?;
    let (dir, rest) = preopens::get_directories()
        .into_iter()
        .filter_map(|(dir, name)| {
            let rest = link
                .strip_prefix(inside(Path::new(&name))?)
                .ok()?
                .to_path_buf();
            Some((dir, name.len(), rest))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(dir, _, rest)| (dir, rest))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("`{}` is in no granted directory", link.display()),
            )
        })?;
    dir.symlink_at(&slash_path(target), &slash_path(&rest))
        .map_err(|code| io::Error::other(format!("symlink-at: {code:?}")))
}

/// The source digest: SHA-256 over every file and symlink under `root`, in the byte order of
/// their `/`-separated relative paths. Each contributes its path, a NUL byte, then for a file
/// `f`, its length as 8 big-endian bytes and its contents; for a symlink `l`, the same for
/// its target. Empty directories do not count.
pub fn digest(root: &Path) -> io::Result<String> {
    tree(root, None).map(|(_, digest)| digest)
}

/// Digests the tree under `root` and, with `copy_to`, copies it there on the same pass, so a
/// directory source is read once. Returns how many files and symlinks there are.
fn tree(root: &Path, copy_to: Option<&Path>) -> io::Result<(u64, String)> {
    let mut items = Vec::new();
    walk(root, Path::new(""), &mut |rel, kind| {
        if kind == Kind::Dir {
            if let Some(to) = copy_to {
                fs::create_dir(to.join(rel))?;
            }
        } else {
            items.push((slash_path(rel), rel.to_path_buf(), kind));
        }
        Ok(())
    })?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hash = Sha256::new();
    let mut buf = vec![0; CHUNK];
    for (name, rel, kind) in &items {
        hash.update(name.as_bytes());
        hash.update([0]);
        let path = root.join(rel);
        if *kind == Kind::Symlink {
            let target = fs::read_link(&path).map_err(|e| {
                // WASI will not read a symlink to an absolute path.
                io::Error::other(format!(
                    "the source holds the symlink `{}`, which cannot be read ({e}); a symlink to an absolute path cannot be deployed",
                    slash_path(rel)
                ))
            })?;
            if let Some(to) = copy_to {
                check_link(rel, &target)
                    .map_err(|e| io::Error::other(format!("the source {e}")))?;
                make_symlink(&target, &to.join(rel))?;
            }
            let target = slash_path(&target);
            hash.update(b"l");
            hash.update((target.len() as u64).to_be_bytes());
            hash.update(target.as_bytes());
        } else {
            let mut file = File::open(&path)?;
            let mut out = copy_to.map(|to| File::create(to.join(rel))).transpose()?;
            hash.update(b"f");
            hash.update(file.metadata()?.len().to_be_bytes());
            loop {
                let got = file.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                hash.update(&buf[..got]);
                if let Some(out) = &mut out {
                    out.write_all(&buf[..got])?;
                }
            }
        }
    }
    Ok((items.len() as u64, hex::encode(hash.finalize())))
}

fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
