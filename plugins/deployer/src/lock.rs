//! The lock that keeps two deploys of one target from interleaving, even from two `shiphat run`
//! processes that know nothing of each other.
//!
//! The lock is an OS lock (`flock`, through the contract's `host.try-lock`) on the file
//! `<target>/.shiphat-lock`, which the holder fills with its owner: the run id, workflow, step
//! and attempt, and when it took the lock. Others read the owner only to say who holds it.
//!
//! The lock belongs to the open file, not to the file's contents: it is released when the
//! step closes the file, and by the engine or the kernel however the step ends (its
//! `timeout:`, a cancel, a trap, the process being killed). So no deploy leaves it behind, and
//! nothing ever has to guess whether an old lock is stale. The file itself stays, holding the
//! last owner's name, and means nothing while no one holds the lock.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use shiphat_plugin_sdk::fs::LockFile;
use shiphat_plugin_sdk::{self as sdk, StepContext, StepError};

/// The lock file's name under the target.
const LOCK: &str = ".shiphat-lock";

/// The longest owner text read back: a real one is a few hundred bytes.
const MAX_OWNER: u64 = 4096;

/// How often a waiting step tries the lock again: often enough that it starts soon after the
/// holder ends, rarely enough that the waiting costs nothing.
const POLL: Duration = Duration::from_millis(100);

/// Who holds the lock, as the lock file says.
#[derive(Serialize, Deserialize, Clone, PartialEq, Eq)]
struct Owner {
    run_id: String,
    workflow: String,
    step_id: String,
    attempt: u32,
    /// When the lock was taken, RFC 3339 UTC with milliseconds.
    since: String,
}

impl Owner {
    fn describe(&self) -> String {
        format!(
            "run `{}` (workflow `{}`, step `{}`) since {}",
            self.run_id, self.workflow, self.step_id, self.since
        )
    }
}

/// The target's lock, held until dropped.
pub struct Lock {
    /// The open lock file; closing it releases the lock.
    file: LockFile,
}

impl Drop for Lock {
    fn drop(&mut self) {
        // The lock goes with the file; emptying it first keeps the next reader from naming a
        // holder that is gone. A holder that dies leaves its name, which is harmless.
        let _ = self.file.replace(b"");
    }
}

impl Lock {
    /// Takes the lock of `target`, which must exist, waiting up to `wait` for its holder to
    /// release it; fails naming the holder when it does not.
    pub fn take(ctx: &StepContext, target: &Path, wait: Duration) -> Result<Lock, StepError> {
        let path = target.join(LOCK);
        let file = LockFile::open(&path).map_err(|e| {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                // An older shiphat's lock was a directory of this name; only a deploy killed
                // by that version leaves one.
                sdk::failed(format!(
                    "`{}` is the lock directory of an older shiphat, left by a deploy it could not finish. If no deploy of `{}` runs, delete it",
                    path.display(),
                    target.display()
                ))
            } else {
                io_failed(&path, e)
            }
        })?;
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            let taken = file
                .try_lock()
                .map_err(|why| sdk::failed(format!("cannot lock `{}`: {why}", path.display())))?;
            if taken {
                let owner = Owner {
                    run_id: ctx.run_id.clone(),
                    workflow: ctx.workflow.clone(),
                    step_id: ctx.step_id.clone(),
                    attempt: ctx.attempt,
                    since: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
                };
                write_owner(&file, &owner).map_err(|e| io_failed(&path, e))?;
                return Ok(Lock { file });
            }
            let held_by = read_owner(&file).map_or_else(
                || "another deploy, which has not yet written its name".to_string(),
                |owner| owner.describe(),
            );
            if Instant::now() >= deadline {
                let hint = if wait.is_zero() {
                    "; set `wait_for_lock: 2m` to wait for it".to_string()
                } else {
                    format!(" after waiting {}", humantime::format_duration(wait))
                };
                return Err(sdk::failed(format!(
                    "`{}` is locked by {held_by}{hint}",
                    target.display()
                )));
            }
            if !told {
                sdk::info(&format!(
                    "waiting up to {} for the lock on `{}`, held by {held_by}",
                    humantime::format_duration(wait),
                    target.display()
                ));
                told = true;
            }
            std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

/// Says in the lock file who holds the lock. Only the holder writes it.
fn write_owner(file: &LockFile, owner: &Owner) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(owner).expect("an owner serializes") + "\n";
    file.replace(text.as_bytes())
}

/// The holder as the lock file names it; `None` when the holder has not written it yet.
fn read_owner(file: &LockFile) -> Option<Owner> {
    serde_json::from_slice(&file.read(MAX_OWNER).ok()?).ok()
}

fn io_failed(path: &Path, e: std::io::Error) -> StepError {
    sdk::failed(format!("`{}` {}", path.display(), sdk::io_error(&e)))
}
