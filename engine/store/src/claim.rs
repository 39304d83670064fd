//! Which queued runs a daemon may start, decided once for both backends: each backend reads
//! the queue, the running keys and the locks in the claim's transaction and hands them to
//! [`plan`], then writes what it decided. Also the types of leases and fencing.

use std::collections::{HashMap, HashSet};

use crate::{Lock, Run};

/// What every write to a running run is checked against: the daemon that claimed it, and
/// which claim (the run's `lease_epoch`, one more at each claim). A daemon paused past its
/// lease, whose run another daemon took over, holds an old fence: its late writes are refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub owner: String,
    pub epoch: i64,
}

/// Which running runs [`crate::AsyncStore::interrupt_running`] interrupts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every one: a daemon alone on its store, starting, owns whatever it finds running.
    All,
    /// Those this daemon owns: its own, when it stops.
    Owner(String),
    /// Those whose lease expired by the database's clock: their daemon died, or lost the
    /// database, or was paused; another daemon takes them over.
    Expired,
}

/// A lease a daemon still holds (see [`crate::AsyncStore::renew`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub run: String,
    pub epoch: i64,
    /// How many times a cancel was asked of the run through the store (by any daemon): one
    /// cancels it, two abort its safety net too.
    pub cancels: u32,
    /// Who asked first, as the run's detail names them when it ends cancelled.
    pub cancelled_by: Option<String>,
}

/// One concurrency key's queue, as a claim found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyQueue {
    /// The run that holds the key (running), if one does.
    pub holder: Option<String>,
    /// The queued runs waiting for it, oldest first (not those a lock holds).
    pub waiting: Vec<String>,
}

/// What a claim did.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// The runs it started, now `running` under the claimer's lease, each with its fence.
    pub started: Vec<(Run, Fence)>,
    /// Queued runs that a lock now holds, whose detail now names it.
    pub held: Vec<String>,
    /// Every concurrency key with a run running or waiting, after the claim.
    pub keys: HashMap<String, KeyQueue>,
}

/// A queued run as the claim's transaction reads it, oldest first.
pub(crate) struct Queued {
    pub id: String,
    pub workflow: String,
    pub key: Option<String>,
    pub forced: bool,
    pub dry_run: bool,
    pub detail: Option<String>,
    pub not_before_ms: Option<i64>,
}

/// What a claim decided.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Plan {
    /// Runs to start, oldest first.
    pub start: Vec<String>,
    /// Runs a lock or their deploy window holds, with the detail to add (only where the
    /// detail does not say it).
    pub hold: Vec<(String, String)>,
    pub keys: HashMap<String, KeyQueue>,
}

/// The detail of a run that `lock` holds.
pub(crate) fn held_detail(lock: &Lock) -> String {
    format!(
        "held by the lock on `{}` of `{}`: {}",
        lock.key, lock.owner, lock.reason
    )
}

/// The detail of a run that waits for its deploy window until `not_before_ms`.
pub(crate) fn window_detail(not_before_ms: i64) -> String {
    format!(
        "waits for the deploy window: opens at {}",
        crate::rfc3339(not_before_ms)
    )
}

/// Decides which of `queued` (oldest first) start: at most `max`, none that a lock in
/// `locks` (those not expired) holds unless forced, none whose `not_before_ms` is after `now`,
/// none that `windows` holds (a closed deploy window, which passes a forced run and a dry run;
/// plugins the daemon still compiles, which pass none), and per
/// concurrency key only the first waiting one, and only when `running` (key → the run
/// holding it) has none.
///
/// A run held by a lock or waiting for its window keeps no place in its key's queue: the runs
/// behind it may start (a forced run, or one of a workflow no window holds), and it takes its
/// turn when it is free to start, as a lock's runs do when the lock goes. Holding the key for
/// it would let one run requested at night block every deploy of its key until morning.
pub(crate) fn plan(
    queued: &[Queued],
    running: HashMap<String, String>,
    locks: &[Lock],
    max: usize,
    now: i64,
    windows: &crate::HoldCheck,
) -> Plan {
    let by_key: HashMap<&str, &Lock> = locks.iter().map(|l| (l.key.as_str(), l)).collect();
    let mut keys: HashMap<String, KeyQueue> = running
        .into_iter()
        .map(|(key, holder)| {
            (
                key,
                KeyQueue {
                    holder: Some(holder),
                    waiting: Vec::new(),
                },
            )
        })
        .collect();
    // Keys a run queued earlier blocks: one running, one skipped, one waiting.
    let mut blocked: HashSet<String> = keys.keys().cloned().collect();
    let mut plan = Plan::default();
    for run in queued {
        let lock = run
            .key
            .iter()
            .map(String::as_str)
            .chain([run.workflow.as_str()])
            .find_map(|k| by_key.get(k));
        if let Some(lock) = lock.filter(|_| !run.forced) {
            let detail = held_detail(lock);
            if !run.detail.as_deref().is_some_and(|d| d.ends_with(&detail)) {
                plan.hold.push((run.id.clone(), detail));
            }
            continue;
        }
        let window = match run.not_before_ms.filter(|t| *t > now) {
            Some(not_before) => Some(window_detail(not_before)),
            None => windows(&run.workflow, run.key.as_deref(), run.forced || run.dry_run),
        };
        if let Some(detail) = window {
            if !run.detail.as_deref().is_some_and(|d| d.ends_with(&detail)) {
                plan.hold.push((run.id.clone(), detail));
            }
            continue;
        }
        let starts =
            plan.start.len() < max && run.key.as_ref().is_none_or(|k| !blocked.contains(k));
        if let Some(key) = &run.key {
            blocked.insert(key.clone());
            let queue = keys.entry(key.clone()).or_default();
            if starts {
                queue.holder = Some(run.id.clone());
            } else {
                queue.waiting.push(run.id.clone());
            }
        }
        if starts {
            plan.start.push(run.id.clone());
        }
    }
    plan.keys = keys;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str, key: Option<&str>) -> Queued {
        Queued {
            id: id.into(),
            workflow: "wf".into(),
            key: key.map(Into::into),
            forced: false,
            dry_run: false,
            detail: None,
            not_before_ms: None,
        }
    }

    fn lock(key: &str) -> Lock {
        Lock {
            key: key.into(),
            owner: "root".into(),
            reason: "freeze".into(),
            created_ms: 0,
            expires_ms: None,
        }
    }

    #[test]
    fn one_run_per_key_starts_in_order_and_others_freely() {
        let q = [
            queued("1", Some("k")),
            queued("2", Some("k")),
            queued("3", None),
            queued("4", Some("j")),
        ];
        let plan = plan(&q, HashMap::new(), &[], 10, 0, &crate::no_holds());
        assert_eq!(plan.start, ["1", "3", "4"]);
        assert_eq!(plan.keys["k"].holder.as_deref(), Some("1"));
        assert_eq!(plan.keys["k"].waiting, ["2"]);
    }

    #[test]
    fn a_running_key_holds_its_queue() {
        let q = [queued("2", Some("k")), queued("3", Some("k"))];
        let running = HashMap::from([("k".to_owned(), "1".to_owned())]);
        let plan = plan(&q, running, &[], 10, 0, &crate::no_holds());
        assert!(plan.start.is_empty());
        assert_eq!(plan.keys["k"].holder.as_deref(), Some("1"));
        assert_eq!(plan.keys["k"].waiting, ["2", "3"]);
    }

    #[test]
    fn a_lock_holds_runs_unless_forced_and_says_so_once() {
        let mut forced = queued("2", Some("k"));
        forced.forced = true;
        let mut said = queued("3", Some("k"));
        said.detail = Some(format!("x; {}", held_detail(&lock("k"))));
        let q = [queued("1", Some("k")), forced, said];
        let plan = plan(&q, HashMap::new(), &[lock("k")], 10, 0, &crate::no_holds());
        assert_eq!(plan.start, ["2"]);
        assert_eq!(plan.hold, [("1".to_owned(), held_detail(&lock("k")))]);
    }

    #[test]
    fn a_lock_on_the_workflow_holds_its_runs_and_not_the_key() {
        let mut other = queued("2", Some("k"));
        other.workflow = "other".into();
        let plan = plan(
            &[queued("1", Some("k")), other],
            HashMap::new(),
            &[lock("wf")],
            10,
            0,
            &crate::no_holds(),
        );
        assert_eq!(plan.start, ["2"]);
        assert_eq!(plan.hold.len(), 1);
    }

    #[test]
    fn a_run_waits_for_its_window_says_so_once_and_does_not_block_its_key() {
        let mut waits = queued("1", Some("k"));
        waits.not_before_ms = Some(2_000);
        let mut said = queued("3", Some("j"));
        said.not_before_ms = Some(2_000);
        said.detail = Some(window_detail(2_000));
        let q = [waits, queued("2", Some("k")), said];
        let early = plan(&q, HashMap::new(), &[], 10, 1_000, &crate::no_holds());
        assert_eq!(early.start, ["2"]);
        assert_eq!(early.hold, [("1".to_owned(), window_detail(2_000))]);
        assert_eq!(
            window_detail(2_000),
            "waits for the deploy window: opens at 1970-01-01T00:00:02.000Z"
        );
        // At its time it starts, in its turn: the oldest of its key first.
        let mut waits = queued("1", Some("k"));
        waits.not_before_ms = Some(2_000);
        let on_time = plan(
            &[waits, queued("2", Some("k"))],
            HashMap::new(),
            &[],
            10,
            2_000,
            &crate::no_holds(),
        );
        assert_eq!(on_time.start, ["1"]);
        assert_eq!(on_time.keys["k"].waiting, ["2"]);
    }

    #[test]
    fn plugins_still_compiling_hold_forced_runs_and_dry_runs_too() {
        // A forced run or a dry run passes a deploy window, not a workflow the daemon cannot
        // run yet: it waits rather than compile on its own deploy path.
        let compiling: crate::HoldCheck = std::sync::Arc::new(|workflow: &str, _, _| {
            (workflow == "wf").then(|| "waits for its plugins to compile".to_owned())
        });
        let mut forced = queued("1", None);
        forced.forced = true;
        let mut rehearsal = queued("2", None);
        rehearsal.dry_run = true;
        let mut other = queued("3", None);
        other.workflow = "other".into();
        let plan = plan(
            &[forced, rehearsal, other],
            HashMap::new(),
            &[],
            10,
            0,
            &compiling,
        );
        assert_eq!(plan.start, ["3"]);
        let held: Vec<&str> = plan.hold.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(held, ["1", "2"]);
    }

    #[test]
    fn a_closed_window_holds_a_run_but_not_a_forced_one_nor_a_dry_run_nor_its_key() {
        // A run accepted inside its window that reaches the front of its queue after the
        // window closed waits; the runs behind it in its key may start.
        let closed: crate::HoldCheck =
            std::sync::Arc::new(|workflow: &str, key: Option<&str>, exempt: bool| {
                (workflow == "wf" && key == Some("prod") && !exempt)
                    .then(|| "waits for the deploy window: frozen for the holidays".to_owned())
            });
        let mut forced = queued("2", Some("prod"));
        forced.forced = true;
        let mut rehearsal = queued("3", Some("prod"));
        rehearsal.dry_run = true;
        let mut other = queued("4", Some("prod"));
        other.workflow = "other".into();
        let q = [queued("1", Some("prod")), forced, rehearsal, other];
        let plan = plan(&q, HashMap::new(), &[], 10, 0, &closed);
        assert_eq!(plan.start, ["2"]);
        assert_eq!(plan.keys["prod"].waiting, ["3", "4"]);
        assert_eq!(
            plan.hold,
            [(
                "1".to_owned(),
                "waits for the deploy window: frozen for the holidays".to_owned()
            )]
        );
    }

    #[test]
    fn at_most_max_start_and_the_rest_wait_their_turn() {
        let q = [
            queued("1", None),
            queued("2", Some("k")),
            queued("3", Some("k")),
        ];
        let plan = plan(&q, HashMap::new(), &[], 1, 0, &crate::no_holds());
        assert_eq!(plan.start, ["1"]);
        assert_eq!(plan.keys["k"].waiting, ["2", "3"]);
    }
}
