//! The lock that keeps two deploys of one target from interleaving, even from two `shiphat run`
//! processes that know nothing of each other.
//!
//! The lock is the directory `<target>/.shiphat-lock/`, holding `owner.json`: the run id,
//! workflow, step and attempt of its holder, and when it took the lock. It is taken by writing
//! the owner into a staging directory and renaming that over `.shiphat-lock`: a rename onto a
//! directory that is not empty fails, so exactly one taker wins, and the lock is never seen
//! without its owner. It is released by renaming it away and deleting it.
//!
//! A step that ends in any way the plugin sees (success, failure, invalid input) releases the
//! lock. A step the engine stops (its `timeout:`, a cancel, a crash of the process) cannot, so
//! the lock stays behind. It is recovered in three ways: a retry of the same step of the same
//! run takes it over at once (the attempt that held it is over); anyone takes it over once it
//! is older than [`STALE_AFTER`]; and a person can delete `<target>/.shiphat-lock/` once they
//! know no deploy of the target runs.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use shiphat_plugin_sdk::{self as sdk, StepContext, StepError};

/// The lock directory's name under the target.
const LOCK: &str = ".shiphat-lock";

/// The file in the lock directory that names its holder.
const OWNER: &str = "owner.json";

/// After how long a lock is taken over from its holder. An hour is six times the engine's
/// default step `timeout:` of 10m, and longer than any deploy of a web release takes, so a
/// lock this old was left by a step that was stopped or killed; a shorter bound would risk two
/// slow deploys interleaving, a longer one would block every deploy for longer after a crash.
pub const STALE_AFTER: Duration = Duration::from_secs(60 * 60);

/// How often a waiting step looks at the lock again: often enough that it starts soon after
/// the holder ends, rarely enough that the waiting costs nothing.
const POLL: Duration = Duration::from_millis(100);

/// Who holds the lock, as `owner.json` says.
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

    /// How long ago the lock was taken; `None` when `since` does not parse.
    fn age(&self) -> Option<Duration> {
        let since = humantime::parse_rfc3339(&self.since).ok()?;
        SystemTime::now().duration_since(since).ok()
    }
}

/// The target's lock, held until dropped.
pub struct Lock {
    dir: PathBuf,
    owner: Owner,
}

impl Lock {
    /// Takes the lock of `target`, which must exist, waiting up to `wait` for its holder to
    /// release it; fails naming the holder when it does not.
    pub fn take(ctx: &StepContext, target: &Path, wait: Duration) -> Result<Lock, StepError> {
        let owner = Owner {
            run_id: ctx.run_id.clone(),
            workflow: ctx.workflow.clone(),
            step_id: ctx.step_id.clone(),
            attempt: ctx.attempt,
            since: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let dir = target.join(LOCK);
        let deadline = Instant::now() + wait;
        let mut told = false;
        loop {
            let holder = match try_take(target, &dir, &owner, true)? {
                None => return Ok(Lock { dir, owner }),
                Some(holder) => holder,
            };
            let earlier_attempt = holder.as_ref().is_some_and(|h| {
                h.run_id == owner.run_id && h.step_id == owner.step_id && h.attempt < owner.attempt
            });
            let stale = holder
                .as_ref()
                .and_then(Owner::age)
                .is_some_and(|age| age > STALE_AFTER);
            let held_by = holder.as_ref().map_or_else(
                || "a holder whose `owner.json` cannot be read".to_string(),
                Owner::describe,
            );
            if earlier_attempt || stale {
                let why = if earlier_attempt {
                    "an earlier attempt of this step, which is over"
                } else {
                    "older than the bound for a live deploy"
                };
                sdk::warn(&format!(
                    "taking over the lock `{}` held by {held_by}: {why}",
                    dir.display()
                ));
                take_over(&dir, holder.as_ref(), &owner.run_id).map_err(|e| io_failed(&dir, e))?;
                continue;
            }
            if Instant::now() >= deadline {
                let hint = if wait.is_zero() {
                    "; set `wait_for_lock: 2m` to wait for it".to_string()
                } else {
                    format!(" after waiting {}", humantime::format_duration(wait))
                };
                return Err(sdk::failed(format!(
                    "`{}` is locked by {held_by}{hint}. If no deploy of it runs (the holder was killed), delete `{}`",
                    target.display(),
                    dir.display()
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

impl Drop for Lock {
    fn drop(&mut self) {
        // A lock taken over as stale is someone else's now: leave it to them.
        match read_owner(&self.dir) {
            Ok(Some(now)) if now == self.owner => {}
            _ => {
                sdk::warn(&format!(
                    "the lock `{}` was taken over while this step held it; left alone",
                    self.dir.display()
                ));
                return;
            }
        }
        if let Err(e) = remove(&self.dir, &format!("released-{}", self.owner.run_id)) {
            sdk::warn(&format!(
                "cannot release the lock `{}`: {}; delete it by hand",
                self.dir.display(),
                sdk::io_error(&e)
            ));
        }
    }
}

/// One attempt at taking the lock: `None` when taken, else the holder (`None` inside when its
/// owner cannot be read).
fn try_take(
    target: &Path,
    dir: &Path,
    owner: &Owner,
    retry: bool,
) -> Result<Option<Option<Owner>>, StepError> {
    let staging = target.join(format!("{LOCK}.new-{}-{}", owner.run_id, owner.step_id));
    let _ = fs::remove_dir_all(&staging);
    let text = serde_json::to_string_pretty(owner).expect("an owner serializes") + "\n";
    fs::create_dir(&staging)
        .and_then(|()| fs::write(staging.join(OWNER), text))
        .map_err(|e| io_failed(&staging, e))?;
    let Err(refused) = fs::rename(&staging, dir) else {
        return Ok(None);
    };
    let _ = fs::remove_dir_all(&staging);
    match read_owner(dir) {
        Ok(Some(holder)) => Ok(Some(Some(holder))),
        // Released between the rename and the read: try once more.
        Ok(None) if retry => try_take(target, dir, owner, false),
        Ok(None) => Err(io_failed(dir, refused)),
        Err(_) => Ok(Some(None)),
    }
}

/// The lock's owner, `None` when there is no lock.
fn read_owner(dir: &Path) -> Result<Option<Owner>, String> {
    match fs::read_to_string(dir.join(OWNER)) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| e.to_string()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !dir.exists() => Ok(None),
        Err(e) => Err(sdk::io_error(&e)),
    }
}

/// Removes the stale lock `dir` held by `holder`. Two takers may both judge it stale: the
/// second would then remove the first one's new lock, so what was renamed away is checked and
/// put back when it is not the stale one.
fn take_over(dir: &Path, holder: Option<&Owner>, run_id: &str) -> io::Result<()> {
    let away = dir.with_file_name(format!("{LOCK}.stale-{run_id}"));
    let _ = fs::remove_dir_all(&away);
    match fs::rename(dir, &away) {
        // Another taker removed it first: the next attempt finds its lock, or none.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        renamed => renamed?,
    }
    if read_owner(&away).ok().flatten().as_ref() != holder {
        // Put back fails only when yet another taker holds it now, which is as good.
        let _ = fs::rename(&away, dir);
        return Ok(());
    }
    fs::remove_dir_all(&away)
}

/// Removes the lock directory `dir` by renaming it away first, so that `.shiphat-lock` is never
/// an empty directory another taker's rename could replace.
fn remove(dir: &Path, suffix: &str) -> io::Result<()> {
    let away = dir.with_file_name(format!("{LOCK}.{suffix}"));
    let _ = fs::remove_dir_all(&away);
    fs::rename(dir, &away)?;
    fs::remove_dir_all(&away)
}

fn io_failed(path: &Path, e: io::Error) -> StepError {
    sdk::failed(format!("`{}` {}", path.display(), sdk::io_error(&e)))
}
