//! The on-disk compile cache.
//!
//! Compiling a component takes tens of milliseconds (seconds for an 18 MB Python one);
//! reading back machine code compiled earlier takes a fraction of one. An entry's file name is
//! the sha256 of the component's bytes together with the engine's compatibility hash, so a
//! change to either misses. Its content is a magic tag, the sha256 of the payload and the
//! payload wasmtime serialised. `Component::deserialize` trusts its input to be what wasmtime
//! wrote, so an entry is checked against its digest before it is handed over; a truncated,
//! corrupt or foreign file is dropped and rebuilt, never loaded.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use crate::LoadKind;

/// Marks a shiphat cache entry, and its layout version.
const MAGIC: &[u8; 8] = b"SHIPHAT1";

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
    if let Some(payload) = read_entry(&path) {
        // SAFETY: the payload's digest matches the one written beside it, so these are the
        // bytes `Component::serialize` produced for an engine with this compatibility hash
        // (it is part of the file name). wasmtime also checks its own header and version.
        match unsafe { Component::deserialize(engine, &payload) } {
            Ok(component) => return Ok((component, LoadKind::Cached)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "dropping unusable cache entry: {e:#}")
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

/// The payload of a valid entry, or `None` (and the file removed) when it is not one.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let mut data = std::fs::read(path).ok()?;
    let valid = data.len() >= MAGIC.len() + 32
        && data.starts_with(MAGIC)
        && Sha256::digest(&data[MAGIC.len() + 32..]).as_slice()
            == &data[MAGIC.len()..MAGIC.len() + 32];
    if !valid {
        tracing::warn!(path = %path.display(), "dropping corrupt compile cache entry");
        let _ = std::fs::remove_file(path);
        return None;
    }
    data.drain(..MAGIC.len() + 32);
    Some(data)
}

/// Writes an entry atomically: a reader sees the old state or the whole new file.
fn write_entry(dir: &Path, path: &Path, payload: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(MAGIC)?;
    tmp.write_all(&Sha256::digest(payload))?;
    tmp.write_all(payload)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
