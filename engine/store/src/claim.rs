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
    pub created_ms: i64,
}

/// How recently a daemon must have claimed to count among the daemons that share the queue
/// (see [`fair_share`]). An accepting daemon claims at least once a second (the server's
/// `CLAIM_POLL`), so five seconds passes a daemon busy for a moment and drops, soon after, one
/// that stopped, drains or was paused.
pub(crate) const CLAIMER_LIVE_MS: i64 = 5_000;

/// How long a run that may start waits for the daemon whose share it is before any daemon
/// takes it past its share: a daemon counted among the claimers may be paused, or gone
/// without handing over, for up to [`CLAIMER_LIVE_MS`]. Two claim polls: a live daemon has
/// claimed twice by then.
pub(crate) const SHARE_GRACE_MS: i64 = 2_000;

/// What a claim sees of the daemons that share a store's queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Claimers {
    /// The daemons that claimed within [`CLAIMER_LIVE_MS`], the claiming one included.
    pub daemons: usize,
    /// The runs running now, on any daemon.
    pub running: usize,
    /// Those the claiming daemon runs.
    pub mine: usize,
}

/// How many of `startable` (the runs a claim may start now, oldest first, as their creation
/// times) the claiming daemon takes: up to its even share of everything running or about to,
/// less what it runs already, and at most `max`. Daemons that share a queue thus each take a
/// part of a burst, instead of whichever heard of it first taking most of it while the others
/// idle (issue 17: three daemons' runs split 33 / 16 / 1). A run that has waited
/// [`SHARE_GRACE_MS`] is taken whatever the share: the daemon whose share it was may be paused.
pub(crate) fn fair_share(claimers: Claimers, startable: &[i64], now: i64, max: usize) -> usize {
    let share = (claimers.running + startable.len()).div_ceil(claimers.daemons.max(1));
    let overdue = startable
        .iter()
        .filter(|created| now - **created >= SHARE_GRACE_MS)
        .count();
    share.saturating_sub(claimers.mine).max(overdue).min(max)
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

impl Plan {
    /// Starts only the first `n` of the runs it starts: each of the others waits at the front
    /// of its key's queue, where [`plan`] with a `max` of `n` would have left it.
    pub(crate) fn start_first(&mut self, n: usize, queued: &[Queued]) {
        if n >= self.start.len() {
            return;
        }
        let keys: HashMap<&str, &str> = queued
            .iter()
            .filter_map(|run| Some((run.id.as_str(), run.key.as_deref()?)))
            .collect();
        let later = self.start.split_off(n);
        // From the last, so that each goes in front of those of its key queued after it.
        for id in later.into_iter().rev() {
            if let Some(queue) = keys.get(id.as_str()).and_then(|k| self.keys.get_mut(*k)) {
                queue.holder = None;
                queue.waiting.insert(0, id);
            }
        }
    }
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
            created_ms: 0,
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
    fn daemons_sharing_a_burst_each_take_an_even_part_of_it() {
        let now = 10_000;
        let burst = [now; 50];
        let claimers = |running, mine| Claimers {
            daemons: 3,
            running,
            mine,
        };
        // The first daemon to claim takes its third, not the whole batch.
        assert_eq!(fair_share(claimers(0, 0), &burst, now, 16), 16);
        assert_eq!(fair_share(claimers(16, 16), &burst[16..], now, 16), 1);
        // The next ones take what is left of theirs.
        assert_eq!(fair_share(claimers(17, 0), &burst[17..], now, 16), 16);
        assert_eq!(fair_share(claimers(33, 0), &burst[33..], now, 17), 17);
        // A daemon that runs its share already takes nothing...
        assert_eq!(fair_share(claimers(40, 20), &burst[..10], now, 16), 0);
        // ...but for runs that waited past the grace: the daemon whose share they are may be
        // paused.
        let waited = [now - SHARE_GRACE_MS, now - SHARE_GRACE_MS, now];
        assert_eq!(fair_share(claimers(40, 20), &waited, now, 16), 2);
        // A daemon alone takes everything, up to `max`.
        let alone = Claimers {
            daemons: 1,
            running: 5,
            mine: 5,
        };
        assert_eq!(fair_share(alone, &burst, now, 16), 16);
        assert_eq!(fair_share(alone, &burst, now, usize::MAX), 50);
    }

    #[test]
    fn a_plan_cut_short_is_the_plan_of_a_smaller_max() {
        let q = [
            queued("1", Some("k")),
            queued("2", None),
            queued("3", Some("j")),
            queued("4", Some("k")),
            queued("5", Some("i")),
            queued("6", Some("j")),
        ];
        let running = HashMap::from([("i".to_owned(), "0".to_owned())]);
        for n in 0..=4 {
            let mut cut = plan(&q, running.clone(), &[], 10, 0, &crate::no_holds());
            cut.start_first(n, &q);
            assert_eq!(
                cut,
                plan(&q, running.clone(), &[], n, 0, &crate::no_holds()),
                "{n}"
            );
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
