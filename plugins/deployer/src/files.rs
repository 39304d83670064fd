//! Putting a build into a release directory, and digesting what is there.
//!
//! Paths are the strings the workflow wrote (`build`, `site/releases/2`): WASI resolves them
//! against the step's preopened directories, so nothing here can reach past a grant.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use shiphat_plugin_sdk::bindings::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, OpenFlags, PathFlags,
};
use shiphat_plugin_sdk::fs::{preopen_for, slash_path};
use shiphat_plugin_sdk::{self as sdk};

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
        let meta =
            fs::metadata(path).map_err(|e| format!("`source`: `{path}` {}", sdk::io_error(&e)))?;
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
    /// files (and symlinks) it wrote and their digest (see [`digest`]). Nothing is synced:
    /// that is [`sync_tree`]'s job, once for the whole release.
    pub fn put(&self, dest: &Path) -> Result<(u64, String), String> {
        fs::create_dir(dest)
            .map_err(|e| format!("cannot create `{}`: {}", dest.display(), sdk::io_error(&e)))?;
        match self {
            Source::Dir(dir) => tree(dir, Some(dest))
                .map_err(|e| format!("copying `{}` failed: {}", dir.display(), sdk::io_error(&e))),
            Source::Tarball(file) => {
                let count = unpack(file, dest)?;
                // Archive order is not path order: digest what was written.
                let digest = digest(dest).map_err(|e| {
                    format!(
                        "reading back `{}` failed: {}",
                        dest.display(),
                        sdk::io_error(&e)
                    )
                })?;
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
    let fail = |e: io::Error| {
        format!(
            "unpacking `{}` failed: {}",
            file.display(),
            sdk::io_error(&e)
        )
    };
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
                // `create_new` never follows a symlink at `dst`, which an earlier entry may
                // have put there to aim this write outside the release.
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&dst)?;
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
        result.map_err(|e| {
            format!(
                "unpacking `{}` failed: {}",
                name.display(),
                sdk::io_error(&e)
            )
        })?;
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
    let (dir, rest) = preopen_for(link)?;
    dir.symlink_at(&slash_path(target), &slash_path(&rest))
        .map_err(|code| io::Error::other(format!("symlink-at: {code:?}")))
}

/// Checks, without writing anything, that `path` is inside a directory the step may write:
/// what a dry run must know to fail where the real run would.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let (dir, _) = preopen_for(path).map_err(|_| {
        format!(
            "`{}` is outside every granted directory; grant it in `allow.write`",
            path.display()
        )
    })?;
    let flags = dir
        .get_flags()
        .map_err(|code| format!("`{}`: {code:?}", path.display()))?;
    if !flags.contains(DescriptorFlags::MUTATE_DIRECTORY) {
        return Err(format!(
            "`{}` is granted read-only; grant it in `allow.write`",
            path.display()
        ));
    }
    Ok(())
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
    let dest = copy_to.map(Dest::open).transpose()?;
    let mut items = Vec::new();
    walk(root, Path::new(""), &mut |rel, kind| {
        if kind == Kind::Dir {
            if let Some(dest) = &dest {
                dest.create_dir(rel)?;
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
            let out = dest.as_ref().map(|dest| dest.create(rel)).transpose()?;
            hash.update(b"f");
            hash.update(file.metadata()?.len().to_be_bytes());
            let mut at = 0;
            loop {
                let got = file.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                hash.update(&buf[..got]);
                if let Some(out) = &out {
                    sdk::fs::write_all_at(out, &buf[..got], at)?;
                }
                at += got as u64;
            }
        }
    }
    Ok((items.len() as u64, hex::encode(hash.finalize())))
}

/// The directory a copy goes to, opened once: each file is created relative to it rather
/// than by a path walked from the grant's root, and written with [`sdk::fs::write_all_at`].
struct Dest {
    dir: Descriptor,
}

impl Dest {
    fn open(path: &Path) -> io::Result<Dest> {
        Ok(Dest {
            dir: sdk::fs::open_dir(path)?,
        })
    }

    fn create_dir(&self, rel: &Path) -> io::Result<()> {
        self.dir
            .create_directory_at(&slash_path(rel))
            .map_err(|code| sdk::fs::error(&format!("creating `{}`", slash_path(rel)), code))
    }

    /// A new file at `rel`. `EXCLUSIVE` never follows a symlink at the name; the directory
    /// is new, so nothing should be there.
    fn create(&self, rel: &Path) -> io::Result<Descriptor> {
        self.dir
            .open_at(
                PathFlags::empty(),
                &slash_path(rel),
                OpenFlags::CREATE | OpenFlags::EXCLUSIVE,
                DescriptorFlags::WRITE,
            )
            .map_err(|code| sdk::fs::error(&format!("creating `{}`", slash_path(rel)), code))
    }
}

/// Makes every file and directory under `root` survive a power cut: one
/// `host.sync-filesystem` where the engine can sync the whole filesystem (what the shell's
/// `sync` does), else an `fsync` of each file and directory. Symlinks are not followed; a
/// link's target text is part of its directory's entries.
pub fn sync_tree(root: &Path) -> io::Result<()> {
    if sdk::fs::sync_filesystem(root)? {
        return Ok(());
    }
    let mut dirs = vec![root.to_path_buf()];
    walk(root, Path::new(""), &mut |rel, kind| {
        match kind {
            Kind::Dir => dirs.push(root.join(rel)),
            // `fsync` writes back the file's data through any descriptor of it.
            Kind::File => File::open(root.join(rel))?.sync_all()?,
            Kind::Symlink => {}
        }
        Ok(())
    })?;
    dirs.iter().try_for_each(|dir| sync_dir(dir))
}

/// `fsync`s the directory `path`, so the entries renamed or created in it survive a power
/// cut. `std` has no call to sync a directory, so this opens it with `wasi:filesystem`'s
/// `open-at` and calls `sync`, which wasmtime-wasi turns into `fsync` on the directory.
pub fn sync_dir(path: &Path) -> io::Result<()> {
    sdk::fs::open_dir(path)?
        .sync()
        .map_err(|code| sdk::fs::error(&format!("sync `{}`", path.display()), code))
}

// The tests run natively (`cargo xtask test`): nothing runs tests inside wasm32.
#[cfg(all(test, not(target_family = "wasm")))]
mod tests {
    //! Native property tests of the checks on a tarball's entry names: the archive is the
    //! build's output, so whoever controls the build controls every name in it.

    use std::os::unix::fs::symlink;

    use proptest::prelude::*;
    use shiphat_proptest::config;

    use super::*;

    /// Pieces of entry names, with every way a name can try to climb out.
    fn piece() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => prop::sample::select(vec![
                "a", "b", "..", ".", "", "/", "//", "...", ".. ", " ..", "..\\", "\\..", "~",
                "C:", "\\\\?\\", "%2e%2e", "\u{0}", "é", "current", "releases",
            ])
            .prop_map(str::to_string),
            1 => ".{0,4}",
        ]
    }

    fn entry_name() -> impl Strategy<Value = String> {
        prop::collection::vec(piece(), 0..8).prop_map(|p| p.join("/"))
    }

    /// The path `rel` names under `root` once `.` and `..` are resolved lexically, as the
    /// filesystem would resolve them without symlinks.
    fn resolve(root: &Path, rel: &Path) -> PathBuf {
        let mut out = root.to_path_buf();
        for c in rel.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    proptest! {
        #![proptest_config(config(2048))]

        /// Whatever an entry is called, what `inside` accepts stays inside the release: no root,
        /// no `..`, nothing but plain names, and it resolves to a path under the release. It
        /// accepts exactly the names with no `..` and no leading `/`, and accepting is stable.
        #[test]
        fn accepted_entry_names_stay_inside_the_release(name in entry_name()) {
            let root = Path::new("/site/releases/7");
            let path = Path::new(&name);
            let climbs = path
                .components()
                .any(|c| matches!(c, Component::ParentDir | Component::RootDir | Component::Prefix(_)));
            match inside(path) {
                None => prop_assert!(climbs, "`{name}` refused but stays inside"),
                Some(rel) => {
                    prop_assert!(!climbs, "`{name}` accepted as `{}`", rel.display());
                    prop_assert!(rel.is_relative());
                    prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
                    let at = resolve(root, &rel);
                    prop_assert!(at.starts_with(root), "`{name}` lands at `{}`", at.display());
                    prop_assert_eq!(inside(&rel), Some(rel.clone()));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(config(128))]

        /// With a symlink planted at any depth of a release, an entry is refused exactly when
        /// it would be written through a symlinked directory above it.
        #[test]
        fn entries_under_a_planted_symlink_are_refused(
            depth in 1usize..5,
            plant_at in 0usize..5,
            absolute_target in any::<bool>(),
        ) {
            let release = tempfile::tempdir().unwrap();
            let outside = tempfile::tempdir().unwrap();
            let parts: Vec<String> = (0..depth).map(|i| format!("d{i}")).collect();
            let rel: PathBuf = parts.iter().collect();
            // Plant a symlink at `plant_at` components deep, when that is above or at the entry.
            let planted = plant_at < depth;
            if planted {
                let dir: PathBuf = parts[..plant_at].iter().collect();
                fs::create_dir_all(release.path().join(&dir)).unwrap();
                let target = if absolute_target {
                    outside.path().to_path_buf()
                } else {
                    PathBuf::from("../".repeat(plant_at + 2))
                };
                symlink(target, release.path().join(&dir).join(&parts[plant_at])).unwrap();
            }
            let refused = no_symlink_above(release.path(), &rel).is_err();
            // The entry's own name being a symlink is `unpack`'s business (it writes the file
            // there), not this check's: only directories above it are looked at.
            prop_assert_eq!(refused, planted && plant_at + 1 < depth);
        }
    }

    /// Writes a `.tar.gz` of `entries` (name, contents; `None` for a directory) under `dir`,
    /// with the names written raw into the headers as a hostile tool would.
    fn tarball(dir: &Path, entries: &[(&str, Option<&[u8]>)]) -> PathBuf {
        let path = dir.join("release.tar.gz");
        let gz = flate2::write::GzEncoder::new(
            File::create(&path).unwrap(),
            flate2::Compression::fast(),
        );
        let mut builder = tar::Builder::new(gz);
        for (name, contents) in entries {
            let mut header = tar::Header::new_gnu();
            let bytes = contents.unwrap_or_default();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(if contents.is_some() {
                tar::EntryType::Regular
            } else {
                tar::EntryType::Directory
            });
            let field = &mut header.as_old_mut().name;
            field[..name.len()].copy_from_slice(name.as_bytes());
            header.set_cksum();
            builder.append(&header, bytes).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
        path
    }

    proptest! {
        #![proptest_config(config(64))]

        /// A whole archive with one hostile name among plain ones: `unpack` writes nothing
        /// outside the release, and refuses exactly the names that climb out.
        #[test]
        fn unpacking_never_writes_outside_the_release(
            names in prop::collection::vec(entry_name().prop_filter("fits a ustar name", |n| {
                !n.is_empty() && n.len() < 100 && !n.contains('\u{0}')
            }), 1..6),
        ) {
            let work = tempfile::tempdir().unwrap();
            let dest = work.path().join("site/releases/1");
            fs::create_dir_all(&dest).unwrap();
            let entries: Vec<(&str, Option<&[u8]>)> =
                names.iter().map(|n| (n.as_str(), Some(&b"x"[..]))).collect();
            let archive = tarball(&work.path().join("site"), &entries);
            let before: Vec<PathBuf> = list(work.path());
            let result = unpack(&archive, &dest);
            let climbs = names.iter().any(|n| {
                Path::new(n).components().any(|c| matches!(c, Component::ParentDir | Component::RootDir))
            });
            if climbs {
                prop_assert!(result.is_err(), "{names:?} unpacked: {result:?}");
            }
            // Whatever happened, every new path is under the release.
            for path in list(work.path()) {
                if !before.contains(&path) {
                    prop_assert!(path.starts_with(&dest), "{names:?} wrote `{}`", path.display());
                }
            }
        }
    }

    /// Every path under `dir`, symlinks not followed.
    fn list(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        walk(dir, Path::new(""), &mut |rel, _| {
            out.push(dir.join(rel));
            Ok(())
        })
        .unwrap();
        out
    }

    // A symlink entry `index.html -> ../../shared.yml` followed by a file entry `index.html`
    // wrote the file through the symlink, outside the release.
    #[test]
    fn a_file_entry_is_not_written_through_a_symlink_at_its_name() {
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("site/releases/2");
        fs::create_dir_all(&dest).unwrap();
        fs::write(work.path().join("site/shared.yml"), "precious").unwrap();
        // As the symlink entry would leave it (make_symlink needs WASI, so it is planted here).
        symlink("../../shared.yml", dest.join("index.html")).unwrap();
        let archive = tarball(work.path(), &[("index.html", Some(&b"pwned"[..]))]);
        let err = unpack(&archive, &dest).unwrap_err();
        assert!(err.contains("index.html"), "{err}");
        let shared = fs::read_to_string(work.path().join("site/shared.yml")).unwrap();
        assert_eq!(shared, "precious");
    }
}
