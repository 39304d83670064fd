//! The on-disk compile cache.
//!
//! Compiling a component takes tens of milliseconds (seconds for an 18 MB Python one);
//! reading back machine code compiled earlier takes a fraction of one. An entry's file name is
//! the sha256 of the component's bytes together with the engine's compatibility hash, so a
//! change to either misses. Its content is the payload wasmtime serialised (an ELF file),
//! then a trailer: a magic tag, the payload's length and its CRC-32. `Component::deserialize`
//! trusts its input to be what wasmtime wrote, so an entry is checked before it is handed
//! over; a truncated, corrupt or foreign file is dropped and rebuilt, never loaded.
//!
//! A valid entry is then mapped, not read: `Component::deserialize_file` maps the file and
//! runs the code in place, where reading it would copy 7 MB twice for a run's three plugins.
//! The trailer is where it is for this: ELF ignores bytes after its sections. An entry is
//! only ever replaced whole (written aside, then renamed over), so a mapped entry never
//! changes under the engine; the cache directory is the engine's own, and a file in it cut
//! short by hand while an engine has it mapped can crash that engine, as with any mapped file.
//!
//! Two smaller kinds of entry spare a run the rest of a plugin's loading when nothing changed:
//! - **A plugin file's digest, by its metadata** (`<key>.file`, where the key hashes the file's
//!   device, inode, size, and change and modification times). A run that finds one neither
//!   reads the `.wasm` nor hashes it (2.7 MB and 2 ms for the deploy protocol's three plugins),
//!   and runs the cache entry of that digest. This is how git, make and rsync tell a file
//!   unchanged. Writing a file changes its modification and change times, and no user can set
//!   a change time back, so a replaced plugin misses. An entry is only written for a file left
//!   alone for [`SETTLED`]: a file changed within the clock tick in which it was read keeps
//!   its times (git's "racily clean" entries), and would otherwise be remembered by the old
//!   digest. A pinned digest is checked against the remembered one: whoever can write these
//!   entries can write the machine code beside them, so they are trusted as much as it is.
//! - **What `describe()` said** (`<key>.describe`, the key of the component's entry), which a
//!   plugin must answer the same way every time: a run then instantiates each plugin once per
//!   step, not once more to ask.
//!
//! Why a CRC and not a cryptographic digest: the check is against accidents (a torn write, a
//! flipped bit, a file of another origin), which a CRC-32 catches all but once in four billion
//! times. It cannot stop someone who can write the cache directory, and no digest stored
//! beside the payload could: they would write a matching one. The CRC reads a run's three
//! plugins' entries (7 MB) in well under a millisecond, where SHA-256 took about 4 ms.

use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::{LoadKind, PluginInfo};

/// Marks a shiphat cache entry, and its layout version. Entries of the first layout
/// (`SHIPHAT1` at the start, with a SHA-256) are rebuilt once.
const MAGIC: &[u8; 8] = b"SHIPHAT2";

/// The trailer: the magic tag, the payload's length (8 bytes, little-endian) and its CRC-32
/// (4 bytes, little-endian).
const TRAILER: usize = MAGIC.len() + 8 + 4;

/// Where an entry cannot be mapped, how much of it is read at a time to check its CRC: small
/// enough to stay in cache, so checking costs no allocation and no page faults.
#[cfg(not(target_os = "linux"))]
const CHECK_CHUNK: usize = 256 * 1024;

/// Feeds a `Hash` into sha256, to turn wasmtime's compatibility hash into stable bytes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        unreachable!("only the digest is read")
    }

    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}

/// The name of a component's cache entry for this engine, without its extension.
pub(crate) fn key(engine: &Engine, component_sha256: &[u8; 32]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.0.update(component_sha256);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    hex::encode(hasher.0.finalize())
}

/// Why [`load`] failed: the component's bytes could not be had, or did not compile.
pub(crate) enum LoadError<E> {
    Source(E),
    Compile(wasmtime::Error),
}

/// One compile at a time in a process. wasmtime spreads a compile over every core already, so
/// compiles side by side finish no sooner together, and each holds its component's machine code
/// and Cranelift's working state at once: about 400 MB at its peak for the 19 MB Python
/// example. A daemon that loads the workflows of several large plugins at once (each file on a
/// task of its own) would otherwise hold them all.
static COMPILING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Compiles a component, or reads it back from `dir` when a valid entry is there.
///
/// `bytes` gives the component's bytes, whose sha256 is `sha256`; it is only called on a miss,
/// so a hit need not read the plugin file at all.
pub(crate) fn load<E>(
    engine: &Engine,
    dir: Option<&Path>,
    bytes: impl FnOnce() -> Result<Vec<u8>, E>,
    sha256: &[u8; 32],
    before_compile: &dyn Fn(usize),
) -> Result<(Component, LoadKind), LoadError<E>> {
    let compile = |bytes: &[u8]| {
        let _alone = COMPILING.lock().unwrap_or_else(|e| e.into_inner());
        Component::new(engine, bytes).map_err(LoadError::Compile)
    };
    let Some(dir) = dir else {
        let bytes = bytes().map_err(LoadError::Source)?;
        before_compile(bytes.len());
        return Ok((compile(&bytes)?, LoadKind::Compiled));
    };
    let path = dir.join(format!("{}.cwasm", key(engine, sha256)));
    if check_entry(&path) {
        // SAFETY: the payload's length and CRC match those in the trailer, so the file holds
        // the bytes `Component::serialize` produced for an engine with this compatibility
        // hash (it is part of the file name), and only a whole valid entry is ever renamed
        // over it. wasmtime also checks its own header and version.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, LoadKind::Cached)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping unusable cache entry: {e:#}");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
    let bytes = bytes().map_err(LoadError::Source)?;
    before_compile(bytes.len());
    let component = compile(&bytes)?;
    let written = component
        .serialize()
        .map_err(std::io::Error::other)
        .and_then(|payload| write_entry(dir, &path, &payload));
    if let Err(e) = written {
        // A cache that cannot be written only costs time; the run goes on.
        tracing::warn!(path = %path.display(), "cannot write the compile cache: {e}");
    }
    Ok((component, LoadKind::Compiled))
}

/// `component`, loaded into another engine that compiles alike (the same compatibility hash,
/// so the same entry): mapped from the entry [`load`] just checked or wrote when there is one,
/// otherwise serialised and read back. Fails when `engine` refuses the component, e.g. a pool
/// engine whose slots it does not fit.
pub(crate) fn load_into(
    engine: &Engine,
    dir: Option<&Path>,
    sha256: &[u8; 32],
    component: &Component,
) -> wasmtime::Result<Component> {
    if let Some(path) = dir.map(|dir| dir.join(format!("{}.cwasm", key(engine, sha256))))
        && path.exists()
    {
        // SAFETY: as in `load`: the entry was checked (or written whole and renamed) by the
        // `load` that made `component`, and entries are only ever replaced whole by a rename.
        return unsafe { Component::deserialize_file(engine, &path) };
    }
    // SAFETY: the bytes are what `serialize` just produced, for an engine that compiles alike.
    unsafe { Component::deserialize(engine, component.serialize()?) }
}

/// Whether `path` is a valid entry: its trailer is there and the payload's length and CRC
/// match it. A file that is there but not valid is removed.
fn check_entry(path: &Path) -> bool {
    let Ok(mut file) = std::fs::File::open(path) else {
        return false;
    };
    let valid = (|| -> std::io::Result<bool> {
        let size = file.metadata()?.len();
        let Some(payload) = size.checked_sub(TRAILER as u64) else {
            return Ok(false);
        };
        let mut trailer = [0; TRAILER];
        file.seek(SeekFrom::Start(payload))?;
        file.read_exact(&mut trailer)?;
        if !trailer.starts_with(MAGIC)
            || trailer[MAGIC.len()..MAGIC.len() + 8] != payload.to_le_bytes()
        {
            return Ok(false);
        }
        let crc = crc_of(&mut file, payload)?;
        Ok(trailer[MAGIC.len() + 8..] == crc.to_le_bytes())
    })()
    .unwrap_or(false);
    if !valid {
        let mut start = [0; 8];
        if file.seek(SeekFrom::Start(0)).is_ok()
            && file.read_exact(&mut start).is_ok()
            && &start == b"SHIPHAT1"
        {
            tracing::debug!(path = %path.display(), "rebuilding a cache entry of the first layout");
        } else {
            tracing::warn!(path = %path.display(), "dropping corrupt compile cache entry");
        }
        let _ = std::fs::remove_file(path);
    }
    valid
}

/// The CRC-32 of the first `len` bytes of `file`, read through a mapping of the page cache
/// rather than copied out of it: for a 5 MB entry, the copy cost more than the CRC.
#[cfg(target_os = "linux")]
fn crc_of(file: &mut std::fs::File, len: u64) -> std::io::Result<u32> {
    use rustix::mm::{MapFlags, ProtFlags};
    let Ok(len) = usize::try_from(len) else {
        return Err(std::io::Error::other("a cache entry larger than memory"));
    };
    if len == 0 {
        return Ok(crc32fast::hash(&[]));
    }
    // SAFETY: a private read-only mapping of `len` bytes, which the file holds (its size was
    // read above), dropped before this returns. Entries are only ever replaced whole by a
    // rename, never changed in place, so the bytes do not change under the mapping.
    unsafe {
        let at = rustix::mm::mmap(
            std::ptr::null_mut(),
            len,
            ProtFlags::READ,
            MapFlags::PRIVATE | MapFlags::POPULATE,
            &*file,
            0,
        )?;
        let crc = crc32fast::hash(std::slice::from_raw_parts(at.cast::<u8>(), len));
        rustix::mm::munmap(at, len)?;
        Ok(crc)
    }
}

/// Elsewhere, the bytes are read through a buffer small enough to stay in cache.
#[cfg(not(target_os = "linux"))]
fn crc_of(file: &mut std::fs::File, len: u64) -> std::io::Result<u32> {
    file.seek(SeekFrom::Start(0))?;
    let mut crc = crc32fast::Hasher::new();
    let mut chunk = vec![0; CHECK_CHUNK];
    let mut left = len;
    while left > 0 {
        let want = left.min(CHECK_CHUNK as u64) as usize;
        file.read_exact(&mut chunk[..want])?;
        crc.update(&chunk[..want]);
        left -= want as u64;
    }
    Ok(crc.finalize())
}

/// The layout of a `.file` entry and of how its key is made. Change it whenever
/// `objects::instances_cost` counts differently: the cost is remembered with the digest.
const FILE_MAGIC: &[u8; 8] = b"SHIPHATF";

/// A `.file` entry: the magic tag, the digest, the instances' cost (8 bytes, little-endian)
/// and the CRC-32 of what comes before it (4 bytes, little-endian).
const FILE_ENTRY: usize = FILE_MAGIC.len() + 32 + 8 + 4;

/// How long a plugin file must have been left alone before its digest is remembered by its
/// metadata: longer than the coarsest clock tick of a common filesystem's times (FAT's two
/// seconds), so a write after the read cannot keep the times it was read with.
const SETTLED: Duration = Duration::from_secs(3);

/// What a plugin file's content was found to be when it was last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KnownFile {
    pub sha256: [u8; 32],
    pub instances_cost: u64,
}

/// The name of the `.file` entry for the file `meta` describes: its device, inode, size and
/// times, which any write changes. `None` where there are no inodes to go by.
#[cfg(unix)]
fn file_key(meta: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let mut hasher = Sha256::new();
    hasher.update(FILE_MAGIC);
    hasher.update(env!("CARGO_PKG_VERSION").as_bytes());
    for n in [meta.dev(), meta.ino(), meta.size()] {
        hasher.update(n.to_le_bytes());
    }
    for n in [
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec(),
    ] {
        hasher.update(n.to_le_bytes());
    }
    Some(format!("{}.file", hex::encode(hasher.finalize())))
}

#[cfg(not(unix))]
fn file_key(_meta: &std::fs::Metadata) -> Option<String> {
    None
}

/// What `path`'s content is, if it was read before and has not changed since.
pub(crate) fn recall_file(dir: &Path, path: &Path) -> Option<KnownFile> {
    let key = file_key(&std::fs::metadata(path).ok()?)?;
    let entry = std::fs::read(dir.join(key)).ok()?;
    let (body, crc) = entry.split_at_checked(FILE_ENTRY - 4)?;
    if entry.len() != FILE_ENTRY
        || !body.starts_with(FILE_MAGIC)
        || crc != crc32fast::hash(body).to_le_bytes()
    {
        return None;
    }
    let at = FILE_MAGIC.len();
    Some(KnownFile {
        sha256: body[at..at + 32].try_into().ok()?,
        instances_cost: u64::from_le_bytes(body[at + 32..].try_into().ok()?),
    })
}

/// Remembers what `path` held when it was read, if its metadata was `before` the read and
/// still is, and the file had been left alone for [`SETTLED`] by `now`. Best effort: an
/// entry not written only costs the next run a read.
pub(crate) fn remember_file(
    dir: &Path,
    path: &Path,
    before: &std::fs::Metadata,
    known: KnownFile,
    now: SystemTime,
) {
    let Ok(after) = std::fs::metadata(path) else {
        return;
    };
    let (Some(key), Some(key_after)) = (file_key(before), file_key(&after)) else {
        return;
    };
    let settled = |time: std::io::Result<SystemTime>| {
        time.ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age >= SETTLED)
    };
    if key != key_after || !settled(after.modified()) || !settled(changed(&after)) {
        return;
    }
    let mut entry = Vec::with_capacity(FILE_ENTRY);
    entry.extend_from_slice(FILE_MAGIC);
    entry.extend_from_slice(&known.sha256);
    entry.extend_from_slice(&known.instances_cost.to_le_bytes());
    entry.extend_from_slice(&crc32fast::hash(&entry).to_le_bytes());
    if let Err(e) = replace(dir, &dir.join(key), &entry) {
        tracing::debug!(path = %path.display(), "cannot remember the plugin's digest: {e}");
    }
}

/// When the file's metadata last changed (its `ctime`), which no user can set.
#[cfg(unix)]
fn changed(meta: &std::fs::Metadata) -> std::io::Result<SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let since_epoch = Duration::new(
        u64::try_from(meta.ctime()).map_err(std::io::Error::other)?,
        u32::try_from(meta.ctime_nsec()).map_err(std::io::Error::other)?,
    );
    Ok(SystemTime::UNIX_EPOCH + since_epoch)
}

#[cfg(not(unix))]
fn changed(meta: &std::fs::Metadata) -> std::io::Result<SystemTime> {
    meta.modified()
}

/// What `describe()` said for this component, if it was asked before under this engine.
pub(crate) fn recall_info(engine: &Engine, dir: &Path, sha256: &[u8; 32]) -> Option<PluginInfo> {
    let text = std::fs::read(dir.join(format!("{}.describe", key(engine, sha256)))).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Remembers what `describe()` said. Best effort, like every write to the cache.
pub(crate) fn remember_info(engine: &Engine, dir: &Path, sha256: &[u8; 32], info: &PluginInfo) {
    let path = dir.join(format!("{}.describe", key(engine, sha256)));
    let written = serde_json::to_vec(info)
        .map_err(std::io::Error::other)
        .and_then(|text| replace(dir, &path, &text));
    if let Err(e) = written {
        tracing::debug!(path = %path.display(), "cannot remember what describe() said: {e}");
    }
}

/// Replaces `path` with `content` atomically, without a sync: such an entry lost to a power
/// cut only costs the next run a read, and a torn one fails its check.
fn replace(dir: &Path, path: &Path, content: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(content)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Writes an entry atomically: a reader sees the old state or the whole new file.
fn write_entry(dir: &Path, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(payload)?;
    tmp.write_all(MAGIC)?;
    tmp.write_all(&(payload.len() as u64).to_le_bytes())?;
    tmp.write_all(&crc32fast::hash(payload).to_le_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A temporary directory with a plugin file in it, and where its cache goes.
    fn plugin_file() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let plugin = dir.path().join("plugin.wasm");
        std::fs::write(&plugin, b"one").unwrap();
        (dir, cache, plugin)
    }

    fn known(byte: u8) -> KnownFile {
        KnownFile {
            sha256: [byte; 32],
            instances_cost: 4096 + u64::from(byte),
        }
    }

    #[test]
    fn a_file_is_known_by_its_metadata_until_it_is_written() {
        let (dir, cache, plugin) = plugin_file();
        let meta = std::fs::metadata(&plugin).unwrap();
        let later = SystemTime::now() + SETTLED * 2;
        remember_file(&cache, &plugin, &meta, known(1), later);
        assert_eq!(recall_file(&cache, &plugin), Some(known(1)));
        // Any write changes the times the entry is found by: the file is read again.
        std::fs::write(&plugin, b"two").unwrap();
        assert_eq!(recall_file(&cache, &plugin), None);
        // So does putting another file in its place, even of the same size and times.
        let other = dir.path().join("other.wasm");
        std::fs::write(&other, b"one").unwrap();
        std::fs::rename(&other, &plugin).unwrap();
        assert_eq!(recall_file(&cache, &plugin), None);
    }

    // A write within the clock tick of the read would keep the file's times, so a file
    // changed less than `SETTLED` ago is never remembered (git's "racily clean" entries).
    #[test]
    fn a_file_changed_just_now_is_not_remembered() {
        let (_dir, cache, plugin) = plugin_file();
        let meta = std::fs::metadata(&plugin).unwrap();
        remember_file(&cache, &plugin, &meta, known(1), SystemTime::now());
        assert_eq!(recall_file(&cache, &plugin), None);
    }

    #[test]
    fn a_file_that_changed_while_it_was_read_is_not_remembered() {
        let (_dir, cache, plugin) = plugin_file();
        let before = std::fs::metadata(&plugin).unwrap();
        std::fs::write(&plugin, b"three").unwrap();
        let later = SystemTime::now() + SETTLED * 2;
        remember_file(&cache, &plugin, &before, known(1), later);
        assert_eq!(recall_file(&cache, &plugin), None);
    }

    #[test]
    fn a_damaged_file_entry_is_ignored() {
        let (_dir, cache, plugin) = plugin_file();
        let meta = std::fs::metadata(&plugin).unwrap();
        remember_file(
            &cache,
            &plugin,
            &meta,
            known(7),
            SystemTime::now() + SETTLED * 2,
        );
        let entry = cache.join(file_key(&meta).unwrap());
        let good = std::fs::read(&entry).unwrap();
        for damage in [
            good[..good.len() - 1].to_vec(),
            [good.as_slice(), b"x"].concat(),
            {
                let mut flipped = good.clone();
                flipped[FILE_MAGIC.len() + 3] ^= 1;
                flipped
            },
            Vec::new(),
        ] {
            std::fs::write(&entry, &damage).unwrap();
            assert_eq!(recall_file(&cache, &plugin), None, "{damage:?}");
        }
    }

    #[test]
    fn describe_answers_are_remembered_per_component_and_engine() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let info = PluginInfo {
            name: "echo".into(),
            version: "1.2.3".into(),
            description: "says it back".into(),
            config_schema: r#"{"type":"object"}"#.into(),
        };
        assert_eq!(recall_info(&engine, dir.path(), &[1; 32]), None);
        remember_info(&engine, dir.path(), &[1; 32], &info);
        assert_eq!(
            recall_info(&engine, dir.path(), &[1; 32]),
            Some(info.clone())
        );
        assert_eq!(recall_info(&engine, dir.path(), &[2; 32]), None);
        let entry = dir
            .path()
            .join(format!("{}.describe", key(&engine, &[1; 32])));
        std::fs::write(&entry, br#"{"name":"echo"}"#).unwrap();
        assert_eq!(recall_info(&engine, dir.path(), &[1; 32]), None);
    }
}
