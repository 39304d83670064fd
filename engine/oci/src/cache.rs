//! The cache of pulled blobs: `blobs/sha256/HEX`, as in an OCI image layout, so a blob's name
//! is its digest. A blob is written aside and renamed into place whole, after its content was
//! checked against its digest; a manifest is checked again on every read (it is small), and a
//! component by the host when it loads it. `tags/` remembers what a tag named when it was last
//! pulled, for a run with no network and no lock file entry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::{Error, OciRef, Result};

pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of a blob, from its `sha256:HEX` digest; `None` for another algorithm or a
    /// malformed digest, which names no file.
    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex_digits = digest.strip_prefix("sha256:")?;
        (hex_digits.len() == 64 && hex_digits.bytes().all(|b| b.is_ascii_hexdigit())).then(|| {
            self.dir
                .join("blobs/sha256")
                .join(hex_digits.to_ascii_lowercase())
        })
    }

    /// The file of a blob the cache holds.
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        self.path(digest).filter(|p| p.is_file())
    }

    /// A blob's content, checked against its digest. A blob that fails the check is removed
    /// and reported.
    pub fn read_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        let Some(path) = self.path(digest) else {
            return Ok(None);
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(Error::Io { path, source }),
        };
        let actual = crate::sha256_digest(&bytes);
        if actual != digest {
            let _ = std::fs::remove_file(&path);
            return Err(Error::Corrupt {
                digest: digest.to_owned(),
                actual,
            });
        }
        Ok(Some(bytes))
    }

    /// Stores a blob under its digest, after checking that its content has that digest.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf> {
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let path = self.path(digest).ok_or_else(|| Error::Corrupt {
            digest: digest.to_owned(),
            actual: actual.clone(),
        })?;
        if actual != digest {
            return Err(Error::Corrupt {
                digest: digest.to_owned(),
                actual,
            });
        }
        write_whole(&path, bytes)?;
        Ok(path)
    }

    pub fn remove_blob(&self, digest: &str) {
        if let Some(path) = self.path(digest) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The file that remembers what `r`'s tag named: the hash of the reference, so that no
    /// registry or repository name becomes a path.
    fn tag_file(&self, r: &OciRef) -> Option<PathBuf> {
        r.tag.as_ref()?;
        let key = hex::encode(Sha256::digest(r.unpinned().to_string().as_bytes()));
        Some(self.dir.join("tags").join(key))
    }

    pub fn remember_tag(&self, r: &OciRef, digest: &str) -> Result<()> {
        match self.tag_file(r) {
            Some(path) => write_whole(&path, format!("{}\n{digest}\n", r.unpinned()).as_bytes()),
            None => Ok(()),
        }
    }

    pub fn recall_tag(&self, r: &OciRef) -> Option<String> {
        let text = std::fs::read_to_string(self.tag_file(r)?).ok()?;
        let mut lines = text.lines();
        // The reference is kept beside the digest so that a hash collision cannot mix two up.
        (lines.next()? == r.unpinned().to_string())
            .then(|| lines.next().map(str::to_owned))
            .flatten()
    }
}

/// Writes a file aside and renames it into place, so that a reader sees all of it or none.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { path, source }
    };
    let dir = path.parent().expect("a cache file has a directory");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let aside = dir.join(format!(
        ".{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&aside, bytes).map_err(io(&aside))?;
    std::fs::rename(&aside, path).map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blob_is_kept_under_its_digest_and_checked_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_owned());
        let digest = crate::sha256_digest(b"component");
        let path = cache.put_blob(&digest, b"component").unwrap();
        assert_eq!(cache.read_blob(&digest).unwrap().unwrap(), b"component");
        // Refused under another name.
        let other = crate::sha256_digest(b"other");
        assert!(matches!(
            cache.put_blob(&other, b"component"),
            Err(Error::Corrupt { .. })
        ));
        // A flipped byte is found on read, and the blob removed.
        std::fs::write(&path, b"c0mponent").unwrap();
        let e = cache.read_blob(&digest).unwrap_err();
        assert!(e.to_string().contains("is corrupt"), "{e}");
        assert!(!path.exists());
        assert!(cache.read_blob(&digest).unwrap().is_none());
        // A digest that names no file.
        assert!(cache.blob("sha256:../../etc/passwd").is_none());
        assert!(cache.blob("md5:abc").is_none());
    }

    #[test]
    fn a_tag_is_remembered_for_its_reference_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_owned());
        let r = OciRef::parse("oci://r.io/acme/notify:1").unwrap();
        let d = crate::sha256_digest(b"m");
        cache.remember_tag(&r, &d).unwrap();
        assert_eq!(cache.recall_tag(&r.pinned(&d)), Some(d));
        let other = OciRef::parse("oci://r.io/acme/notify:2").unwrap();
        assert_eq!(cache.recall_tag(&other), None);
    }
}
