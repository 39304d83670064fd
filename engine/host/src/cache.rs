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
//! Why a CRC and not a cryptographic digest: the check is against accidents (a torn write, a
//! flipped bit, a file of another origin), which a CRC-32 catches all but once in four billion
//! times. It cannot stop someone who can write the cache directory, and no digest stored
//! beside the payload could: they would write a matching one. The CRC reads a run's three
//! plugins' entries (7 MB) in well under a millisecond, where SHA-256 took about 4 ms.

use std::hash::{Hash, Hasher};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::LoadKind;

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

/// The name of a component's cache entry for this engine.
fn key(engine: &Engine, component_sha256: &[u8; 32]) -> String {
    let mut hasher = ShaHasher(Sha256::new());
    hasher.0.update(component_sha256);
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{}.cwasm", hex::encode(hasher.0.finalize()))
}

/// Compiles a component, or reads it back from `dir` when a valid entry is there.
pub(crate) fn load(
    engine: &Engine,
    dir: Option<&Path>,
    bytes: &[u8],
    sha256: &[u8; 32],
    before_compile: &dyn Fn(),
) -> wasmtime::Result<(Component, LoadKind)> {
    let Some(dir) = dir else {
        before_compile();
        return Ok((Component::new(engine, bytes)?, LoadKind::Compiled));
    };
    let path = dir.join(key(engine, sha256));
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
    before_compile();
    let component = Component::new(engine, bytes)?;
    if let Err(e) = write_entry(dir, &path, &component.serialize()?) {
        // A cache that cannot be written only costs time; the run goes on.
        tracing::warn!(path = %path.display(), "cannot write the compile cache: {e}");
    }
    Ok((component, LoadKind::Compiled))
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
