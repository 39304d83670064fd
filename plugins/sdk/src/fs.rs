//! What `std::fs` cannot do under WASI: find the preopened directory that holds a path, open
//! a directory as a descriptor, lock a file against other deploys (the contract's
//! `host.try-lock`) and make a whole filesystem durable (`host.sync-filesystem`).

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::bindings::shiphat::plugin::host;
use crate::bindings::wasi::filesystem::preopens;
use crate::bindings::wasi::filesystem::types::{
    Descriptor, DescriptorFlags, ErrorCode, OpenFlags, PathFlags,
};

/// The preopened directory that holds `path`, found by its guest name as `std` itself
/// resolves paths, and the rest of `path` inside it. The directory is what the step's grant
/// names (`site` for `allow.write: [site]`), so whatever is reached through it stays inside
/// the grant.
pub fn preopen_for(path: &Path) -> io::Result<(Descriptor, PathBuf)> {
    let name = guest_name(path).ok_or_else(|| {
        io::Error::other(format!(
            "`{}` climbs out of a directory it names; write the path without `..` after a name",
            path.display()
        ))
    })?;
    preopens::get_directories()
        .into_iter()
        .filter_map(|(dir, guest)| {
            let rest = name.strip_prefix(guest_name(Path::new(&guest))?).ok()?;
            Some((dir, guest.len(), rest.to_path_buf()))
        })
        .max_by_key(|(_, len, _)| *len)
        .map(|(dir, _, rest)| (dir, rest))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("`{}` is in no granted directory", path.display()),
            )
        })
}

/// `path` as WASI's libc matches it against the names of preopened directories: without `.`
/// components and without a leading `/` (`/srv/www` and `srv/www` name the same preopen), and
/// with `..` only at the start (`../x`, a grant outside the workflow's directory). `None` for
/// a `..` after a name, which only the filesystem could resolve.
fn guest_name(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::ParentDir if out.iter().all(|c| c == "..") => out.push(".."),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// `path` with `/` between its parts, as `wasi:filesystem` takes paths.
pub fn slash_path(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The directory `path` as a `wasi:filesystem` descriptor, for the calls `std::fs` has no
/// name for. It can write where its grant can. A symlink at `path` itself is not followed.
pub fn open_dir(path: &Path) -> io::Result<Descriptor> {
    let (preopen, rest) = preopen_for(path)?;
    if rest.as_os_str().is_empty() {
        return Ok(preopen);
    }
    preopen
        .open_at(
            PathFlags::empty(),
            &slash_path(&rest),
            OpenFlags::DIRECTORY,
            DescriptorFlags::READ,
        )
        .map_err(|code| error(&format!("open-at `{}`", path.display()), code))
}

/// Makes everything written so far to the filesystem that holds the directory `path`
/// survive a power cut, as `sync` does (the contract's `host.sync-filesystem`). `Ok(false)`
/// when the engine's platform cannot: then `fsync` each file and directory instead. The
/// step needs an `allow.write` grant on `path`.
pub fn sync_filesystem(path: &Path) -> io::Result<bool> {
    host::sync_filesystem(&open_dir(path)?).map_err(io::Error::other)
}

/// Writes all of `bytes` to `file` from `offset` on, with `wasi:filesystem`'s `write`.
///
/// Why not `std::fs::File::write`: under WASI, `std` writes a file through an output stream,
/// which wasmtime hands to a thread pool and back for every write; `write` on the
/// descriptor is done on the step's own thread. For a deploy of many small files, the
/// difference is most of the copying time.
pub fn write_all_at(file: &Descriptor, mut bytes: &[u8], mut offset: u64) -> io::Result<()> {
    while !bytes.is_empty() {
        let wrote = file
            .write(bytes, offset)
            .map_err(|code| error("write", code))?;
        if wrote == 0 {
            // A descriptor that takes nothing would otherwise be asked again forever.
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write: wrote nothing",
            ));
        }
        bytes = &bytes[wrote as usize..];
        offset += wrote;
    }
    Ok(())
}

/// `code` as the `std::io::Error` that `std::fs` would give, so [`crate::io_error`] explains it.
pub fn error(what: &str, code: ErrorCode) -> io::Error {
    let kind = match code {
        ErrorCode::Access | ErrorCode::NotPermitted | ErrorCode::ReadOnly => {
            io::ErrorKind::PermissionDenied
        }
        ErrorCode::NoEntry => io::ErrorKind::NotFound,
        ErrorCode::Exist => io::ErrorKind::AlreadyExists,
        ErrorCode::IsDirectory => io::ErrorKind::IsADirectory,
        ErrorCode::NotDirectory => io::ErrorKind::NotADirectory,
        ErrorCode::InsufficientSpace => io::ErrorKind::StorageFull,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("{what}: {code:?}"))
}

/// A file opened to be locked: a deploy's lock file, say. The lock is the engine's OS lock
/// (`flock`) on the open file, so it also excludes steps in other `shiphat` processes. It is
/// released when this value is dropped, and however the step ends: its timeout, a cancel, a
/// trap or the engine's process dying release it too, so no lock is ever left behind.
pub struct LockFile {
    file: Descriptor,
}

impl LockFile {
    /// Opens `path` for reading and writing, creating it when missing. A symlink at `path` is
    /// not followed: the lock file is the directory's own.
    pub fn open(path: &Path) -> io::Result<LockFile> {
        let (dir, rest) = preopen_for(path)?;
        let file = dir
            .open_at(
                PathFlags::empty(),
                &slash_path(&rest),
                OpenFlags::CREATE,
                DescriptorFlags::READ | DescriptorFlags::WRITE,
            )
            .map_err(|code| error("open-at", code))?;
        Ok(LockFile { file })
    }

    /// Takes the lock without waiting: `true` when taken (or already held through this
    /// value), `false` when another holder has it. To wait, call again after a pause.
    pub fn try_lock(&self) -> io::Result<bool> {
        host::try_lock(&self.file).map_err(io::Error::other)
    }

    /// Up to `max` bytes from the start of the file.
    pub fn read(&self, max: u64) -> io::Result<Vec<u8>> {
        let (bytes, _) = self.file.read(max, 0).map_err(|code| error("read", code))?;
        Ok(bytes)
    }

    /// Replaces the file's contents with `bytes`: for the holder, to say who it is.
    pub fn replace(&self, bytes: &[u8]) -> io::Result<()> {
        self.file
            .set_size(0)
            .map_err(|code| error("set-size", code))?;
        write_all_at(&self.file, bytes, 0)
    }
}
