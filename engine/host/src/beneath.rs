//! Opens a step's granted directories on the host without following a symlink out of the
//! grant's root (see [`shiphat_workflow::Grant::root`]).
//!
//! A grant's path is text, normalised without touching the disk. Opened as it is, a symlink
//! on the way (one a release tarball planted, say `releases/r1/esc -> ../../../outside`)
//! would take it, and everything the plugin does there, anywhere on the host. On Linux each
//! grant is opened with `openat2(RESOLVE_BENEATH)` from its root, so the kernel refuses any
//! symlink or `..` that leaves it, and the directory WASI gets is the one that was checked.
//! Elsewhere (or on a kernel without `openat2`) the path is resolved with `canonicalize` and
//! checked to stay under the root.

use std::io;
use std::path::{Path, PathBuf};

use shiphat_workflow::Grant;

/// A granted directory, opened and checked: what to hand WASI as the preopen's host path.
pub(crate) struct Opened {
    /// A path that names exactly the checked directory.
    pub(crate) path: PathBuf,
    /// Keeps the checked directory open until WASI has opened it too.
    #[cfg(target_os = "linux")]
    _fd: Option<std::os::fd::OwnedFd>,
}

/// Opens `grant.host_path` beneath `grant.root`, creating missing directories when `create`.
/// Fails, naming the grant, when the path leads out of its root.
pub(crate) fn open(grant: &Grant, create: bool) -> Result<Opened, String> {
    let rel = grant.host_path.strip_prefix(&grant.root).map_err(|_| {
        format!(
            "`{}` is not under `{}`",
            grant.host_path.display(),
            grant.root.display()
        )
    })?;
    // The directories above a grant outside the workflow's directory are trusted as written
    // (docs/security.md), so a `write` grant may create them: a first deploy to `/srv/www` on
    // a new machine needs it. Inside the workflow's directory the root exists already.
    if create && !grant.root.exists() {
        std::fs::create_dir_all(&grant.root).map_err(|e| describe(grant, &e))?;
    }
    #[cfg(target_os = "linux")]
    match linux::open(&grant.root, rel, create) {
        Ok(fd) => return Ok(opened_fd(grant, fd)),
        // A kernel older than 5.6 has no openat2, and older container seccomp profiles refuse
        // syscalls they do not know with EPERM, which opening a directory never fails with.
        Err(e)
            if [rustix::io::Errno::NOSYS, rustix::io::Errno::PERM]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error())) => {}
        Err(e) => return Err(describe(grant, &e)),
    }
    portable(grant, rel, create).map_err(|e| describe(grant, &e))
}

#[cfg(target_os = "linux")]
fn opened_fd(grant: &Grant, fd: std::os::fd::OwnedFd) -> Opened {
    use std::os::fd::AsRawFd;
    // The magic link re-opens the very directory that was checked, so nothing can swap a
    // symlink in between the check and WASI's own open. Without /proc, the checked path.
    static PROC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let path = if *PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
    } else {
        grant.host_path.clone()
    };
    Opened {
        path,
        _fd: Some(fd),
    }
}

/// The error for a grant that cannot be opened, saying which and why.
fn describe(grant: &Grant, e: &io::Error) -> String {
    if e.raw_os_error() == Some(EXDEV) {
        format!(
            "`{}` leads out of `{}` through a symlink or `..`; a grant never follows a symlink out of its root: grant the directory the symlink points to instead, or remove the symlink",
            grant.host_path.display(),
            grant.root.display()
        )
    } else {
        format!("`{}`: {e}", grant.host_path.display())
    }
}

/// What `openat2(RESOLVE_BENEATH)` fails with when the path would leave its root (the same
/// number on Linux and the BSDs); the portable resolution fails with it too.
const EXDEV: i32 = 18;

/// Resolves with `canonicalize` and checks the result stays under the canonical root.
fn portable(grant: &Grant, rel: &Path, create: bool) -> io::Result<Opened> {
    let root = std::fs::canonicalize(&grant.root)?;
    let escapes = || io::Error::from_raw_os_error(EXDEV);
    // Create one directory at a time, checking each before going into it.
    let mut at = root.clone();
    for part in rel.components() {
        at.push(part);
        if create && std::fs::symlink_metadata(&at).is_err() {
            std::fs::create_dir(&at).or_else(|e| match e.kind() {
                io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })?;
        }
        at = std::fs::canonicalize(&at)?;
        if !at.starts_with(&root) {
            return Err(escapes());
        }
    }
    if !std::fs::metadata(&at)?.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    Ok(Opened {
        path: at,
        #[cfg(target_os = "linux")]
        _fd: None,
    })
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::path::{Component, Path, PathBuf};

    use rustix::fs::{Mode, OFlags, ResolveFlags};
    use rustix::io::Errno;

    /// The directory bits new grant directories are created with, before the umask.
    const DIR_MODE: u32 = 0o777;

    fn beneath(root: &OwnedFd, rel: &Path) -> rustix::io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            root,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
    }

    pub(super) fn open(root: &Path, rel: &Path, create: bool) -> io::Result<OwnedFd> {
        let root = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        match beneath(&root, rel) {
            Err(Errno::NOENT) if create => {}
            other => return Ok(other?),
        }
        // Create what is missing one directory at a time, each inside a directory that was
        // itself opened beneath the root; `mkdirat` never follows a symlink it finds in place.
        let mut at = PathBuf::new();
        let mut dir = beneath(&root, &at)?;
        for part in rel.components() {
            let Component::Normal(name) = part else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain path",
                ));
            };
            at.push(name);
            dir = match beneath(&root, &at) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&dir, name, Mode::from_raw_mode(DIR_MODE)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    beneath(&root, &at)?
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `base/` with `base/releases/r1/esc -> ../../../outside` and `base/current -> releases/r1`.
    fn layout() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base");
        std::fs::create_dir_all(base.join("releases/r1")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::os::unix::fs::symlink("../../../outside", base.join("releases/r1/esc")).unwrap();
        std::os::unix::fs::symlink("releases/r1", base.join("current")).unwrap();
        dir
    }

    fn grant(dir: &tempfile::TempDir, rel: &str) -> Grant {
        let root = dir.path().join("base");
        Grant {
            host_path: root.join(rel),
            guest_path: rel.to_owned(),
            alias: None,
            root,
        }
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused_and_one_inside_is_followed() {
        let dir = layout();
        for create in [false, true] {
            let error = open(&grant(&dir, "releases/r1/esc"), create).err().unwrap();
            assert!(error.contains("leads out of"), "{error}");
            let error = open(&grant(&dir, "releases/r1/esc/new"), create)
                .err()
                .unwrap();
            assert!(error.contains("leads out of"), "{error}");
        }
        assert!(!dir.path().join("outside/new").exists());
        open(&grant(&dir, "current/logs/today"), true).unwrap();
        assert!(dir.path().join("base/releases/r1/logs/today").is_dir());
        open(&grant(&dir, "current"), false).unwrap();
    }

    #[test]
    fn the_portable_resolution_refuses_the_same_escapes() {
        let dir = layout();
        for rel in ["releases/r1/esc", "releases/r1/esc/new"] {
            let g = grant(&dir, rel);
            let rel = g.host_path.strip_prefix(&g.root).unwrap().to_owned();
            let error = portable(&g, &rel, true).err().unwrap();
            assert_eq!(error.raw_os_error(), Some(EXDEV), "{error}");
        }
        assert!(!dir.path().join("outside/new").exists());
        let g = grant(&dir, "current/cache");
        let rel = g.host_path.strip_prefix(&g.root).unwrap().to_owned();
        portable(&g, &rel, true).unwrap();
        assert!(dir.path().join("base/releases/r1/cache").is_dir());
    }
}
