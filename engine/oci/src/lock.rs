//! `shiphat.lock`: beside the workflows (cargo's convention), it pins every `oci://` reference
//! they use to the digest of its manifest. `shiphat plugin lock` writes it; a run reads it.
//! It is TOML, sorted by reference, so that a change to it reads well in a review.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, OciRef, Result};

/// The lock file's name, in the directory of the workflows it pins.
pub const FILE: &str = "shiphat.lock";
/// The format this build reads and writes.
const VERSION: u32 = 1;
const HEADER: &str = "# Written by `shiphat plugin lock`: the digest each OCI plugin of the workflows in this\n# directory runs at. Commit it; update it with `shiphat plugin lock`, which shows what changed.\n";

/// One pinned reference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The reference as workflows write it, without a digest.
    pub reference: String,
    /// The manifest's digest: what runs.
    pub digest: String,
    /// The component's digest (the layer's), for a reader comparing with other tools.
    pub component: String,
    /// The plugin's name and version, as its `describe()` says.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    #[serde(default, rename = "plugin")]
    plugins: Vec<Entry>,
}

/// A lock file, read or about to be written.
#[derive(Clone, Debug)]
pub struct Lock {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
}

impl Lock {
    /// The lock file of the workflow file `workflow`: `shiphat.lock` in its directory.
    pub fn path_for(workflow: &Path) -> PathBuf {
        workflow.parent().unwrap_or(Path::new(".")).join(FILE)
    }

    pub fn empty(path: PathBuf) -> Lock {
        Lock {
            path,
            entries: BTreeMap::new(),
        }
    }

    /// Reads a lock file; one that does not exist pins nothing.
    pub fn read(path: &Path) -> Result<Lock> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Lock::empty(path.to_owned()));
            }
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        Lock::parse(path, &text)
    }

    /// Reads the text of the lock file at `path` (one read from git, say).
    pub fn parse(path: &Path, text: &str) -> Result<Lock> {
        let bad = |message: String| Error::Lock {
            path: path.to_owned(),
            message,
        };
        let file: File = toml::from_str(text).map_err(|e| {
            bad(format!(
                "{e}; it is written by `shiphat plugin lock`, which can write it afresh"
            ))
        })?;
        if file.version != VERSION {
            return Err(bad(format!(
                "lock file version {} is not one this shiphat reads ({VERSION}); write it again with `shiphat plugin lock`",
                file.version
            )));
        }
        let mut entries = BTreeMap::new();
        for entry in file.plugins {
            let r = OciRef::parse(&entry.reference).map_err(&bad)?;
            if r.digest.is_some() {
                return Err(bad(format!(
                    "`{}`: a locked reference carries no digest; the digest goes in `digest`",
                    entry.reference
                )));
            }
            OciRef::parse(&format!("{}@{}", entry.reference, entry.digest)).map_err(&bad)?;
            if entries.insert(r.to_string(), entry).is_some() {
                return Err(bad(format!("`{}` is pinned twice", r)));
            }
        }
        Ok(Lock {
            path: path.to_owned(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry that pins `r` (whatever digest `r` carries).
    pub fn get(&self, r: &OciRef) -> Option<&Entry> {
        self.entries.get(&r.unpinned().to_string())
    }

    pub fn set(&mut self, entry: Entry) {
        self.entries.insert(entry.reference.clone(), entry);
    }

    /// Keeps only the references `keep` says to.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.entries.retain(|reference, _| keep(reference));
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Writes the lock file whole (aside, then renamed over the old one).
    pub fn write(&self) -> Result<()> {
        let file = File {
            version: VERSION,
            plugins: self.entries.values().cloned().collect(),
        };
        let text = format!(
            "{HEADER}\n{}",
            toml::to_string_pretty(&file).expect("a lock file serialises")
        );
        let aside = self.path.with_extension("lock.new");
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        std::fs::write(&aside, text).map_err(io(&aside))?;
        std::fs::rename(&aside, &self.path).map_err(io(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    fn entry(reference: &str) -> Entry {
        Entry {
            reference: reference.into(),
            digest: A.into(),
            component: A.into(),
            name: "notify".into(),
            version: "1.0.0".into(),
        }
    }

    #[test]
    fn a_lock_file_reads_back_what_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        assert_eq!(Lock::read(&path).unwrap().entries().count(), 0);
        let mut lock = Lock::empty(path.clone());
        lock.set(entry("oci://r.io/b:1"));
        lock.set(entry("oci://r.io/a:1"));
        lock.write().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# Written by `shiphat plugin lock`"),
            "{text}"
        );
        // Sorted by reference, for reviews.
        assert!(
            text.find("r.io/a:1").unwrap() < text.find("r.io/b:1").unwrap(),
            "{text}"
        );
        let read = Lock::read(&path).unwrap();
        let r = OciRef::parse(&format!("oci://r.io/a:1@{A}")).unwrap();
        assert_eq!(read.get(&r), Some(&entry("oci://r.io/a:1")));
    }

    #[test]
    fn a_bad_lock_file_says_how_to_mend_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        for (text, says) in [
            ("version = 2\n", "lock file version 2"),
            ("version = 1\nplugins = []\n", "unknown field"),
            (
                "version = 1\n[[plugin]]\nreference = \"oci://r.io/a:1\"\ndigest = \"sha256:12\"\ncomponent = \"\"\n",
                "expected 64 hex digits",
            ),
            (
                &format!(
                    "version = 1\n[[plugin]]\nreference = \"oci://r.io/a:1@{A}\"\ndigest = \"{A}\"\ncomponent = \"\"\n"
                ),
                "carries no digest",
            ),
            (
                &format!(
                    "version = 1\n[[plugin]]\nreference = \"oci://r.io/a:1\"\ndigest = \"{A}\"\ncomponent = \"\"\n[[plugin]]\nreference = \"oci://r.io/a:1\"\ndigest = \"{A}\"\ncomponent = \"\"\n"
                ),
                "pinned twice",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = Lock::read(&path).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
