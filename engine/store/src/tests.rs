//! The store's tests, run against every backend: one suite, two backends. Each case is a
//! function of the store under test, and `both!` makes a test of it for SQLite (a file in a
//! temporary directory) and one for PostgreSQL (a fresh database on a real server, see
//! `testing.rs`). What only one backend has (a file's mode, a schema written before versions
//! were kept, a server restart) is tested beside it, in `sqlite.rs` or `postgres.rs`.

use std::any::Any;
use std::sync::Arc;

// The cases call the blocking interface only: with both traits in scope every call would be
// ambiguous. A case that queues a write without waiting names `AsyncStore` in full.
use crate::{
    Applied, Approval, AsyncStore, AuditEntry, Change, Commit, Decide, Error, Fence, Lock,
    MAX_AUDIT_FIELD, NewRun, Outcome, PgStore, RunFilter, RunSource, RunStatus, Scope, Section,
    SessionRecord, SqliteStore, StepState, Store, TokenRecord, VoteRecord, no_holds, now_ms,
};

/// No cap on queued runs.
pub(crate) const ANY: u64 = u64::MAX;

/// A store under test, through both interfaces, and what keeps its database alive.
pub(crate) struct Tested {
    /// The blocking interface, which the cases use.
    pub store: Arc<dyn Store + Send + Sync>,
    /// The same store, for a case that queues a write without waiting for it.
    pub queue: Arc<dyn AsyncStore>,
    /// The temporary directory, or the server; dropped after the store.
    _keep: Box<dyn Any>,
}

impl Tested {
    fn of<S: AsyncStore>(store: S, keep: Box<dyn Any>) -> Tested {
        let store = Arc::new(store);
        Tested {
            store: store.clone(),
            queue: store,
            _keep: keep,
        }
    }

    pub(crate) fn sqlite() -> Tested {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db/shiphat.sqlite")).unwrap();
        Tested::of(store, Box::new(dir))
    }

    pub(crate) fn postgres() -> Tested {
        let server = crate::testing::Postgres::shared();
        let store = PgStore::open(&server.database(), None).unwrap();
        Tested::of(store, Box::new(server))
    }
}

/// A test per backend for each case: `sqlite::CASE` and `postgres::CASE`.
macro_rules! both {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::Tested::sqlite());
                }
            )*
        }
        mod postgres {
            $(
                #[test]
                fn $case() {
                    super::$case(&super::Tested::postgres());
                }
            )*
        }
    };
}

both!(
    idempotency_key_returns_the_first_run,
    events_are_refused_unless_running_and_steps_finish_once,
    interrupt_running_names_the_step_in_flight,
    concurrent_writers_share_commits_and_a_failed_write_is_undone_alone,
    tokens_are_listed_and_deleted_by_name,
    a_change_of_state_keeps_the_detail,
    prune_keeps_unfinished_runs,
    audit_fields_are_capped_and_old_entries_pruned,
    expired_locks_are_not_held,
    a_pattern_with_a_comma_stays_one_pattern,
    a_run_ends_with_its_last_event_and_a_queue_cap_is_kept,
    a_soon_write_alone_still_commits,
    runs_are_listed_newest_first_filtered_and_paged,
    a_transition_moves_a_run_only_from_the_states_it_names,
    every_status_and_section_is_kept_by_its_name,
    inputs_and_outputs_come_back_as_they_were_written,
    a_write_the_database_refuses_is_undone_alone,
    claims_start_one_run_per_key_in_order_whoever_claims,
    a_lock_holds_claims_unless_forced_and_says_so_once,
    a_run_waits_for_its_window_without_blocking_its_key,
    an_exclusive_run_is_refused_while_its_key_is_busy,
    a_stale_fence_writes_nothing_and_an_expired_lease_is_taken_over,
    renewing_keeps_leases_and_reports_cancels,
    a_released_lease_is_taken_over_at_once,
    a_daemon_interrupts_only_its_own_runs_when_it_stops,
    sessions_are_found_until_they_expire_or_end,
    a_token_keeps_its_newest_sessions_and_never_ends_another_tokens,
    the_session_cap_refuses_only_when_no_expired_session_can_go,
    deleting_a_token_ends_its_sessions,
    an_approval_keeps_its_first_deadline_and_counts_each_person_once,
    a_run_keeps_where_it_was_started_from,
    a_workflows_audit_history_is_its_own_newest_first,
);

fn a_run_keeps_where_it_was_started_from(t: &Tested) {
    let store = &*t.store;
    for (n, source) in RunSource::ALL.into_iter().enumerate() {
        let id = format!("01{n}");
        let run = NewRun {
            source,
            ..new_run(&id, None)
        };
        let (created, _) = store.create_run(&run, ANY).unwrap();
        assert_eq!(created.source, Some(source));
        assert_eq!(store.run(&id).unwrap().unwrap().source, Some(source));
    }
    let listed: Vec<_> = store
        .list_runs(&RunFilter {
            limit: 10,
            ..RunFilter::default()
        })
        .unwrap()
        .into_iter()
        .map(|r| r.source)
        .collect();
    assert_eq!(listed.len(), RunSource::ALL.len());
    assert!(listed.iter().all(Option::is_some), "{listed:?}");
    // A retried request answers with the first run, source and all.
    let first = NewRun {
        source: RunSource::Slack,
        ..new_run("02a", Some("k"))
    };
    store.create_run(&first, ANY).unwrap();
    let again = NewRun {
        source: RunSource::Cli,
        ..new_run("02b", Some("k"))
    };
    let (replayed, created) = store.create_run(&again, ANY).unwrap();
    assert!(!created);
    assert_eq!(replayed.source, Some(RunSource::Slack));
}

fn a_workflows_audit_history_is_its_own_newest_first(t: &Tested) {
    let store = &*t.store;
    let entry = |at_ms, action: &str, target: &str, outcome: &str| AuditEntry {
        at_ms,
        principal: None,
        action: action.into(),
        target: target.into(),
        remote: "deploy.yaml".into(),
        status: 200,
        outcome: outcome.into(),
    };
    let now = now_ms();
    store
        .audit(&entry(now, "reload workflow", "deploy", "first"))
        .unwrap();
    store
        .audit(&entry(now, "reload workflow", "other", "not this workflow"))
        .unwrap();
    store
        .audit(&entry(now, "POST /api/v1/runs", "deploy", "not a reload"))
        .unwrap();
    store
        .audit(&entry(now, "reload workflow", "deploy", "second"))
        .unwrap();
    let outcomes = |limit| -> Vec<String> {
        store
            .audit_of("reload workflow", "deploy", limit)
            .unwrap()
            .into_iter()
            .map(|e| e.outcome)
            .collect()
    };
    assert_eq!(outcomes(10), ["second", "first"]);
    assert_eq!(outcomes(1), ["second"]);
    assert!(
        store
            .audit_of("reload workflow", "nothing", 10)
            .unwrap()
            .is_empty()
    );
}

/// The daemon the cases claim runs as, with a lease no case outlives.
const ME: &str = "test-daemon";
const LEASE_MS: i64 = 600_000;

/// Claims every run that may start, as [`ME`]; the fence of each.
pub(crate) fn claim_all(store: &dyn Store) -> std::collections::HashMap<String, Fence> {
    store
        .claim(ME, LEASE_MS, u32::MAX, &no_holds())
        .unwrap()
        .started
        .into_iter()
        .map(|(run, fence)| (run.id, fence))
        .collect()
}

/// Starts `id` (and whatever else may start), as [`ME`].
pub(crate) fn start(store: &dyn Store, id: &str) -> Fence {
    claim_all(store)
        .remove(id)
        .unwrap_or_else(|| panic!("run `{id}` did not start"))
}

pub(crate) fn new_run(id: &str, key: Option<&str>) -> NewRun {
    NewRun {
        id: id.into(),
        workflow: "wf".into(),
        inputs: serde_json::json!({"a": 1}),
        principal: "ci".into(),
        source: RunSource::Api,
        dry_run: false,
        concurrency_key: None,
        idempotency_key: key.map(Into::into),
        exclusive: false,
        forced: false,
        not_before_ms: None,
    }
}

fn finished(step: &str) -> Change {
    ended(step, Section::Steps, StepState::Succeeded)
}

fn ended(step: &str, section: Section, status: StepState) -> Change {
    Change::StepFinished {
        step: step.into(),
        section,
        status,
        attempts: 1,
        duration_ms: 1.5,
        summary: "done".into(),
        outputs: serde_json::json!({"x": 1}),
        error: None,
        continued: false,
    }
}

fn idempotency_key_returns_the_first_run(t: &Tested) {
    let store = &*t.store;
    let (first, created) = store.create_run(&new_run("01a", Some("k")), ANY).unwrap();
    assert!(created);
    let (again, created) = store.create_run(&new_run("01b", Some("k")), ANY).unwrap();
    assert!(!created);
    assert_eq!(again.id, first.id);
    assert_eq!(
        store
            .list_runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .len(),
        1
    );
}

fn events_are_refused_unless_running_and_steps_finish_once(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let unclaimed = Fence {
        owner: ME.into(),
        epoch: 1,
    };
    assert_eq!(
        store
            .append_event("01a", &unclaimed, "{}", None, Commit::Now)
            .unwrap(),
        None
    );
    let fence = start(store, "01a");
    assert_eq!(fence, unclaimed);
    let begin = Change::StepStarted {
        step: "s".into(),
        section: Section::Steps,
        attempt: 1,
    };
    store
        .append_event("01a", &fence, "{\"e\":1}", Some(&begin), Commit::Now)
        .unwrap()
        .unwrap();
    store
        .append_event(
            "01a",
            &fence,
            "{\"e\":2}",
            Some(&finished("s")),
            Commit::Now,
        )
        .unwrap()
        .unwrap();
    let again = store.append_event(
        "01a",
        &fence,
        "{\"e\":3}",
        Some(&finished("s")),
        Commit::Now,
    );
    assert!(
        matches!(again, Err(Error::StepAlreadyFinished { .. })),
        "{again:?}"
    );
    let steps = store.steps("01a").unwrap();
    assert_eq!(steps.len(), 1);
    assert_eq!(steps[0].status, StepState::Succeeded);
    assert_eq!(steps[0].outputs, serde_json::json!({"x": 1}));
    assert_eq!(store.events("01a", 0, 100).unwrap().len(), 2);
}

fn interrupt_running_names_the_step_in_flight(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let fence = start(store, "01a");
    let begin = Change::StepStarted {
        step: "deploy".into(),
        section: Section::Steps,
        attempt: 1,
    };
    store
        .append_event("01a", &fence, "{}", Some(&begin), Commit::Now)
        .unwrap();
    let interrupted = store.interrupt_running(&Scope::All).unwrap();
    assert_eq!(interrupted[0].in_flight, vec!["deploy".to_owned()]);
    let run = store.run("01a").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(
        store.steps("01a").unwrap()[0].status,
        StepState::Interrupted
    );
    assert!(store.interrupt_running(&Scope::All).unwrap().is_empty());
    // Its daemon is fenced out: its late writes are refused.
    assert_eq!(
        store
            .append_event("01a", &fence, "{}", None, Commit::Now)
            .unwrap(),
        None
    );
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

fn concurrent_writers_share_commits_and_a_failed_write_is_undone_alone(t: &Tested) {
    let store = t.store.clone();
    let runs = 16;
    for r in 0..runs {
        let id = format!("01{r:02}");
        store.create_run(&new_run(&id, None), ANY).unwrap();
    }
    let fences = claim_all(&*store);
    let threads = (0..runs)
        .map(|r| {
            let store = store.clone();
            let queue = t.queue.clone();
            let id = format!("01{r:02}");
            let fence = fences[&id].clone();
            std::thread::spawn(move || {
                for s in 0..50 {
                    let step = format!("s{s}");
                    let start = Change::StepStarted {
                        step: step.clone(),
                        section: Section::Steps,
                        attempt: 1,
                    };
                    store
                        .append_event(&id, &fence, "{}", Some(&start), Commit::Now)
                        .unwrap();
                    // Queued without waiting; the end below commits it.
                    drop(crate::AsyncStore::append_event(
                        &*queue,
                        &id,
                        &fence,
                        "{\"event\":\"log\"}",
                        None,
                        Commit::Soon,
                    ));
                    store
                        .append_event(&id, &fence, "{}", Some(&finished(&step)), Commit::Now)
                        .unwrap()
                        .unwrap();
                    // Refused, and undone alone: the writes grouped with it stay.
                    assert!(matches!(
                        store.append_event(
                            &id,
                            &fence,
                            "{\"again\":1}",
                            Some(&finished(&step)),
                            Commit::Now
                        ),
                        Err(Error::StepAlreadyFinished { .. })
                    ));
                }
            })
        })
        .collect::<Vec<_>>();
    for thread in threads {
        thread.join().unwrap();
    }
    for r in 0..runs {
        let id = format!("01{r:02}");
        let steps = store.steps(&id).unwrap();
        assert_eq!(steps.len(), 50);
        assert!(steps.iter().all(|s| s.status == StepState::Succeeded));
        let events = store.events(&id, 0, 1000).unwrap();
        // Start, log and end per step, in the order written; no refused write left a trace.
        assert_eq!(events.len(), 150);
        assert!(events.iter().all(|(_, body)| !body.contains("again")));
        assert!(events.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(events[1].1, "{\"event\":\"log\"}");
    }
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

fn tokens_are_listed_and_deleted_by_name(t: &Tested) {
    let store = &*t.store;
    let token = TokenRecord {
        name: "ci".into(),
        roles: vec!["deployer".into()],
        patterns: vec!["web/*".into()],
        created_ms: now_ms(),
    };
    store.add_token("aa", &token).unwrap();
    assert_eq!(store.tokens().unwrap(), vec![token.clone()]);
    // A second principal of the same name is refused, whatever its secret.
    assert!(matches!(
        store.add_token("bb", &token),
        Err(Error::NameTaken { .. })
    ));
    assert_eq!(store.tokens().unwrap().len(), 1);
    assert!(store.delete_token("ci").unwrap());
    assert!(!store.delete_token("ci").unwrap());
    assert_eq!(store.token("aa").unwrap(), None);
    assert!(store.tokens().unwrap().is_empty());
}

fn a_change_of_state_keeps_the_detail(t: &Tested) {
    // Moving a resumed run to `running` wiped its `resumed by` detail.
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let move_to = |from, to, detail| store.transition("01a", &[from], to, detail).unwrap();
    start(store, "01a");
    store.interrupt_running(&Scope::All).unwrap();
    assert!(store.requeue("01a", "resumed by `root`", false).unwrap());
    assert!(!store.requeue("01a", "resumed again", false).unwrap());
    assert!(move_to(RunStatus::Queued, RunStatus::Queued, Some("held")));
    assert!(move_to(RunStatus::Queued, RunStatus::Queued, Some("held")));
    start(store, "01a");
    assert_eq!(
        store.run("01a").unwrap().unwrap().detail.as_deref(),
        Some("interrupted between steps; resumed by `root`; held")
    );
}

fn prune_keeps_unfinished_runs(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    store.create_run(&new_run("01b", None), ANY).unwrap();
    store
        .transition("01a", &[RunStatus::Queued], RunStatus::Succeeded, None)
        .unwrap();
    assert_eq!(store.queued_of("ci").unwrap(), 1);
    assert_eq!(store.queued_of("root").unwrap(), 0);
    assert_eq!(store.prune(now_ms() + 1000).unwrap(), 1);
    assert!(store.run("01a").unwrap().is_none());
    assert!(store.run("01b").unwrap().is_some());
}

fn audit_fields_are_capped_and_old_entries_pruned(t: &Tested) {
    // A 60 KB path was stored whole in every entry, by anyone, signed in or not.
    let store = &*t.store;
    let long = "é".repeat(30_000);
    let entry = |at_ms| AuditEntry {
        at_ms,
        principal: Some(long.clone()),
        action: format!("POST /{long}"),
        target: long.clone(),
        remote: long.clone(),
        status: 401,
        outcome: long.clone(),
    };
    store.audit(&entry(1)).unwrap();
    store.audit(&entry(now_ms())).unwrap();
    let kept = store.audit_log(10).unwrap();
    let fields = |e: &AuditEntry| {
        [
            e.principal.clone().unwrap(),
            e.action.clone(),
            e.target.clone(),
            e.remote.clone(),
            e.outcome.clone(),
        ]
    };
    for field in fields(&kept[0]) {
        assert!(field.len() <= MAX_AUDIT_FIELD + 32, "{}", field.len());
        assert!(field.ends_with("more bytes)"), "{field}");
    }
    assert_eq!(store.prune_audit(now_ms() - 1000).unwrap(), 1);
    assert_eq!(store.audit_log(10).unwrap().len(), 1);
}

fn expired_locks_are_not_held(t: &Tested) {
    let store = &*t.store;
    let lock = Lock {
        key: "web".into(),
        owner: "ops".into(),
        reason: "freeze".into(),
        created_ms: now_ms(),
        expires_ms: Some(now_ms() - 1),
    };
    store.put_lock(&lock).unwrap();
    assert_eq!(store.lock("web").unwrap(), None);
    store
        .put_lock(&Lock {
            expires_ms: None,
            ..lock.clone()
        })
        .unwrap();
    assert_eq!(store.lock("web").unwrap().unwrap().owner, "ops");
    assert!(store.delete_lock("web").unwrap());
    assert!(!store.delete_lock("web").unwrap());
}

fn a_pattern_with_a_comma_stays_one_pattern(t: &Tested) {
    // Patterns were joined with commas: `web/{a,b}` came back as `web/{a` and `b}`.
    let store = &*t.store;
    let token = TokenRecord {
        name: "ci".into(),
        roles: vec!["deployer".into()],
        patterns: vec!["web/{a,b}".into()],
        created_ms: now_ms(),
    };
    store.add_token("aa", &token).unwrap();
    assert_eq!(store.token("aa").unwrap().unwrap(), token);
}

fn a_run_ends_with_its_last_event_and_a_queue_cap_is_kept(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), 1).unwrap();
    assert!(matches!(
        store.create_run(&new_run("01b", None), 1),
        Err(Error::TooManyQueued { max: 1, .. })
    ));
    // The same request again is its first run, whatever the cap.
    store.create_run(&new_run("01c", Some("k")), 2).unwrap();
    let (again, created) = store.create_run(&new_run("01d", Some("k")), 0).unwrap();
    assert_eq!((again.id.as_str(), created), ("01c", false));
    let fence = start(store, "01a");
    let end = Change::RunEnded {
        status: RunStatus::Cancelled,
        detail: Some("cancelled by `ci`".into()),
    };
    assert!(
        store
            .append_event("01a", &fence, "{}", Some(&end), Commit::Now)
            .unwrap()
            .is_some()
    );
    let run = store.run("01a").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.finished_ms.is_some());
    assert_eq!(run.detail.as_deref(), Some("cancelled by `ci`"));
    // Nothing more is written to an ended run.
    assert_eq!(
        store
            .append_event("01a", &fence, "{}", None, Commit::Now)
            .unwrap(),
        None
    );
}

fn a_soon_write_alone_still_commits(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let fence = start(store, "01a");
    let started = std::time::Instant::now();
    let seq = store
        .append_event("01a", &fence, "{}", None, Commit::Soon)
        .unwrap();
    assert!(seq.is_some());
    // Within about `SOON`: far below this bound even on a loaded machine.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(store.events("01a", 0, 10).unwrap().len(), 1);
}

fn runs_are_listed_newest_first_filtered_and_paged(t: &Tested) {
    let store = &*t.store;
    for (id, workflow) in [
        ("01a", "web"),
        ("01b", "docs"),
        ("01c", "web"),
        ("01d", "web"),
    ] {
        let run = NewRun {
            workflow: workflow.into(),
            ..new_run(id, None)
        };
        store.create_run(&run, ANY).unwrap();
    }
    store
        .transition("01c", &[RunStatus::Queued], RunStatus::Failed, None)
        .unwrap();
    let ids = |filter: RunFilter| {
        let runs = store.list_runs(&filter).unwrap();
        runs.into_iter().map(|r| r.id).collect::<Vec<_>>()
    };
    let all = RunFilter {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(all.clone()), ["01d", "01c", "01b", "01a"]);
    let web = RunFilter {
        workflow: Some("web".into()),
        ..all.clone()
    };
    assert_eq!(ids(web.clone()), ["01d", "01c", "01a"]);
    let queued_web = RunFilter {
        status: Some(RunStatus::Queued),
        ..web
    };
    assert_eq!(ids(queued_web), ["01d", "01a"]);
    // A page of two, then the page after its last run.
    let first_page = RunFilter {
        limit: 2,
        ..all.clone()
    };
    assert_eq!(ids(first_page), ["01d", "01c"]);
    let next_page = RunFilter {
        before: Some("01c".into()),
        ..all
    };
    assert_eq!(ids(next_page), ["01b", "01a"]);
    let queued = store.runs_with_status(RunStatus::Queued).unwrap();
    let queued: Vec<_> = queued.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(queued, ["01a", "01b", "01d"]);
}

fn a_transition_moves_a_run_only_from_the_states_it_names(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let moved = |from: &[RunStatus], to| store.transition("01a", from, to, None).unwrap();
    // Compare-and-set: a run that is not where the caller thinks stays where it is.
    assert!(!moved(&[RunStatus::Interrupted], RunStatus::Succeeded));
    let missing = store.transition("nope", &[RunStatus::Queued], RunStatus::Failed, None);
    assert!(!missing.unwrap());
    // Never into `running`, which only a claim does, under a lease.
    assert!(!moved(&[RunStatus::Queued], RunStatus::Running));
    let run = store.run("01a").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Queued);
    assert_eq!((run.started_ms, run.finished_ms), (None, None));
    start(store, "01a");
    let run = store.run("01a").unwrap().unwrap();
    assert!(run.started_ms.is_some() && run.finished_ms.is_none());
    // Nor out of it: a run's owner ends it, with its last event, or it is interrupted.
    assert!(!moved(&RunStatus::ALL, RunStatus::Succeeded));
    assert_eq!(
        store.run("01a").unwrap().unwrap().status,
        RunStatus::Running
    );
    store.create_run(&new_run("01b", None), ANY).unwrap();
    let moved = store.transition("01b", &[RunStatus::Queued], RunStatus::Failed, None);
    assert!(moved.unwrap());
    let run = store.run("01b").unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.finished_ms.is_some());
    assert_eq!(store.integrity_check().unwrap(), "ok");
}

fn every_status_and_section_is_kept_by_its_name(t: &Tested) {
    // A status the protocol gains must be one the database takes (PostgreSQL checks the
    // names): this fails until a migration allows it.
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    for status in RunStatus::ALL {
        if status == RunStatus::Running {
            continue;
        }
        let moved = store.transition("01a", &RunStatus::ALL, status, None);
        assert!(moved.unwrap(), "{status:?}");
        assert_eq!(store.run("01a").unwrap().unwrap().status, status);
    }
    store.create_run(&new_run("01b", None), ANY).unwrap();
    let fence = start(store, "01b");
    assert_eq!(
        store.run("01b").unwrap().unwrap().status,
        RunStatus::Running
    );
    for (i, status) in StepState::ALL.into_iter().enumerate() {
        let section = Section::ALL[i % Section::ALL.len()];
        let step = format!("s{i}");
        let end = ended(&step, section, status);
        store
            .append_event("01b", &fence, "{}", Some(&end), Commit::Now)
            .unwrap()
            .unwrap();
        let recorded = store.steps("01b").unwrap().pop().unwrap();
        assert_eq!(
            (recorded.step, recorded.section, recorded.status),
            (step, section, status)
        );
    }
}

fn inputs_and_outputs_come_back_as_they_were_written(t: &Tested) {
    // Key order is part of what a person wrote: a store that sorted keys would show it changed.
    let store = &*t.store;
    let inputs = serde_json::json!({"zeta": [1, 2.5, null], "alpha": {"é": "\u{1F680} ok"}});
    let run = NewRun {
        inputs: inputs.clone(),
        concurrency_key: Some("web-prod".into()),
        dry_run: true,
        ..new_run("01a", None)
    };
    store.create_run(&run, ANY).unwrap();
    let run = store.run("01a").unwrap().unwrap();
    assert_eq!(run.inputs.to_string(), inputs.to_string());
    assert!(run.dry_run);
    assert_eq!(run.concurrency_key.as_deref(), Some("web-prod"));
    let fence = start(store, "01a");
    let error = shiphat_protocol::StepError {
        kind: shiphat_protocol::ErrorKind::Failed,
        message: "boom".into(),
    };
    let end = Change::StepFinished {
        step: "s".into(),
        section: Section::Finally,
        status: StepState::Failed,
        attempts: 3,
        duration_ms: 1.5,
        summary: "broke".into(),
        outputs: serde_json::json!({"b": 1, "a": 2}),
        error: Some(error.clone()),
        continued: true,
    };
    let event = r#"{"raw": true}"#;
    store
        .append_event("01a", &fence, event, Some(&end), Commit::Now)
        .unwrap()
        .unwrap();
    let step = &store.steps("01a").unwrap()[0];
    assert_eq!(step.outputs.to_string(), r#"{"b":1,"a":2}"#);
    assert_eq!(step.error.as_ref(), Some(&error));
    assert!(step.continued);
    assert_eq!((step.attempts, step.duration_ms), (3, Some(1.5)));
    assert_eq!(
        (step.section, step.summary.as_str()),
        (Section::Finally, "broke")
    );
    assert_eq!(store.events("01a", 0, 10).unwrap()[0].1, event);
}

fn a_write_the_database_refuses_is_undone_alone(t: &Tested) {
    // PostgreSQL aborts the whole transaction on an error: the writes that share it must
    // still commit.
    let token = |name: &str| TokenRecord {
        name: name.into(),
        roles: vec!["viewer".into()],
        patterns: Vec::new(),
        created_ms: 1,
    };
    t.store.add_token("aa", &token("first")).unwrap();
    // Queued at once, so that they share a transaction; the second one's secret is taken.
    let queue = &*t.queue;
    let before = AsyncStore::create_run(queue, &new_run("01a", None), ANY);
    let refused = AsyncStore::add_token(queue, "aa", &token("second"));
    let after = AsyncStore::create_run(queue, &new_run("01b", None), ANY);
    assert!(crate::wait(before).is_ok());
    let refused = crate::wait(refused);
    assert!(
        matches!(refused, Err(Error::Database(_) | Error::Postgres(_))),
        "{refused:?}"
    );
    assert!(crate::wait(after).is_ok());
    for id in ["01a", "01b"] {
        assert!(t.store.run(id).unwrap().is_some(), "{id}");
    }
    assert_eq!(t.store.tokens().unwrap(), vec![token("first")]);
    assert_eq!(t.store.integrity_check().unwrap(), "ok");
}

fn keyed(id: &str, key: &str) -> NewRun {
    NewRun {
        concurrency_key: Some(key.into()),
        ..new_run(id, None)
    }
}

fn run_ended(status: RunStatus) -> Change {
    Change::RunEnded {
        status,
        detail: None,
    }
}

fn claimed(store: &dyn Store, owner: &str, max: u32) -> Vec<(String, Fence)> {
    let claimed = store.claim(owner, LEASE_MS, max, &no_holds()).unwrap();
    claimed
        .started
        .into_iter()
        .map(|(run, fence)| (run.id, fence))
        .collect()
}

fn ids(claimed: &[(String, Fence)]) -> Vec<&str> {
    claimed.iter().map(|(id, _)| id.as_str()).collect()
}

fn claims_start_one_run_per_key_in_order_whoever_claims(t: &Tested) {
    let store = &*t.store;
    for run in [keyed("01a", "k"), keyed("01b", "k"), new_run("01c", None)] {
        store.create_run(&run, ANY).unwrap();
    }
    let a = claimed(store, "a", 1);
    assert_eq!(ids(&a), ["01a"]);
    assert_eq!(a[0].1.owner, "a");
    // The API says which daemon runs a run, and only while it runs.
    assert_eq!(
        store.run("01a").unwrap().unwrap().daemon.as_deref(),
        Some("a")
    );
    assert_eq!(store.run("01b").unwrap().unwrap().daemon, None);
    // Another daemon: the key is running elsewhere, so only the run without one.
    let b = store.claim("b", LEASE_MS, 10, &no_holds()).unwrap();
    let started: Vec<_> = b.started.iter().map(|(r, _)| r.id.as_str()).collect();
    assert_eq!(started, ["01c"]);
    assert_eq!(b.keys["k"].holder.as_deref(), Some("01a"));
    assert_eq!(b.keys["k"].waiting, ["01b"]);
    assert!(claimed(store, "b", 10).is_empty());
    let (_, fence) = &a[0];
    store
        .append_event(
            "01a",
            fence,
            "{}",
            Some(&run_ended(RunStatus::Succeeded)),
            Commit::Now,
        )
        .unwrap()
        .unwrap();
    // `a`, which runs nothing now: `b` runs its share of what runs and may start.
    let a = claimed(store, "a", 10);
    assert_eq!(ids(&a), ["01b"]);
    let first = store.run("01a").unwrap().unwrap();
    assert_eq!(first.daemon, None);
    let second = store.run("01b").unwrap().unwrap();
    assert!(first.finished_ms.unwrap() <= second.started_ms.unwrap());
}

fn a_lock_holds_claims_unless_forced_and_says_so_once(t: &Tested) {
    let store = &*t.store;
    store
        .put_lock(&Lock {
            key: "k".into(),
            owner: "root".into(),
            reason: "freeze".into(),
            created_ms: now_ms(),
            expires_ms: None,
        })
        .unwrap();
    store.create_run(&keyed("01a", "k"), ANY).unwrap();
    let forced = NewRun {
        forced: true,
        ..keyed("01b", "k")
    };
    store.create_run(&forced, ANY).unwrap();
    let claim = store.claim(ME, LEASE_MS, 10, &no_holds()).unwrap();
    let started: Vec<_> = claim.started.iter().map(|(r, _)| r.id.as_str()).collect();
    assert_eq!(started, ["01b"]);
    assert_eq!(claim.held, ["01a"]);
    let said = "held by the lock on `k` of `root`: freeze";
    assert_eq!(
        store.run("01a").unwrap().unwrap().detail.as_deref(),
        Some(said)
    );
    // Held again by the same lock: nothing new to say.
    assert!(
        store
            .claim(ME, LEASE_MS, 10, &no_holds())
            .unwrap()
            .held
            .is_empty()
    );
    assert_eq!(
        store.run("01a").unwrap().unwrap().detail.as_deref(),
        Some(said)
    );
    assert!(store.delete_lock("k").unwrap());
    // The forced run holds the key now; the held one waits its turn.
    assert!(claimed(store, ME, 10).is_empty());
}

fn a_run_waits_for_its_window_without_blocking_its_key(t: &Tested) {
    let store = &*t.store;
    let later = now_ms() + 3_600_000;
    let waits = |id: &str, key: &str, at: i64| NewRun {
        not_before_ms: Some(at),
        ..keyed(id, key)
    };
    store.create_run(&waits("01a", "k", later), ANY).unwrap();
    store.create_run(&keyed("01b", "k"), ANY).unwrap();
    // A time already past: it starts as any run would.
    store
        .create_run(&waits("01c", "j", now_ms() - 1), ANY)
        .unwrap();
    let claim = store.claim(ME, LEASE_MS, 10, &no_holds()).unwrap();
    let mut started: Vec<_> = claim.started.iter().map(|(r, _)| r.id.as_str()).collect();
    started.sort();
    assert_eq!(started, ["01b", "01c"]);
    assert_eq!(claim.held, ["01a"]);
    let said = format!(
        "waits for the deploy window: opens at {}",
        crate::rfc3339(later)
    );
    let detail = store.run("01a").unwrap().unwrap().detail;
    assert_eq!(detail.as_deref(), Some(said.as_str()));
    // Still waiting: nothing new to say, and it is nobody's turn on `k` but the running run's.
    let again = store.claim(ME, LEASE_MS, 10, &no_holds()).unwrap();
    assert!(again.held.is_empty() && again.started.is_empty());
    assert_eq!(store.run("01a").unwrap().unwrap().status, RunStatus::Queued);
    assert_eq!(
        store.run("01a").unwrap().unwrap().detail.as_deref(),
        Some(said.as_str())
    );
}

fn an_exclusive_run_is_refused_while_its_key_is_busy(t: &Tested) {
    let store = &*t.store;
    let exclusive = |id: &str| NewRun {
        exclusive: true,
        ..keyed(id, "k")
    };
    store.create_run(&exclusive("01a"), ANY).unwrap();
    let busy = store.create_run(&exclusive("01b"), ANY);
    assert!(
        matches!(&busy, Err(Error::KeyBusy { key, holder }) if key == "k" && holder == "01a"),
        "{busy:?}"
    );
    let fence = start(store, "01a");
    assert!(matches!(
        store.create_run(&exclusive("01c"), ANY),
        Err(Error::KeyBusy { .. })
    ));
    store
        .append_event(
            "01a",
            &fence,
            "{}",
            Some(&run_ended(RunStatus::Failed)),
            Commit::Now,
        )
        .unwrap();
    store.create_run(&exclusive("01d"), ANY).unwrap();
}

fn a_stale_fence_writes_nothing_and_an_expired_lease_is_taken_over(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    store.create_run(&new_run("01b", None), ANY).unwrap();
    // A lease of nothing: expired as soon as it is taken, as if its daemon had been paused.
    let claim = store.claim("zombie", 0, 1, &no_holds()).unwrap();
    let (run, stale) = claim.started.into_iter().next().unwrap();
    assert_eq!(run.id, "01a");
    let begin = Change::StepStarted {
        step: "deploy".into(),
        section: Section::Steps,
        attempt: 1,
    };
    assert_eq!(
        store
            .append_event("01a", &stale, "{}", Some(&begin), Commit::Now)
            .unwrap(),
        None
    );
    let live = claimed(store, "live", 10);
    assert_eq!(ids(&live), ["01b"]);
    // Only the expired lease is taken over.
    let taken = store.interrupt_running(&Scope::Expired).unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].run, "01a");
    assert!(
        store
            .requeue("01a", "resumed automatically", false)
            .unwrap()
    );
    let again = claimed(store, "live", 10);
    assert_eq!(ids(&again), ["01a"]);
    assert_eq!(again[0].1.epoch, stale.epoch + 1);
    // The zombie wakes: its writes lose, whatever it writes.
    for change in [Some(&begin), Some(&run_ended(RunStatus::Succeeded)), None] {
        assert_eq!(
            store
                .append_event("01a", &stale, "{}", change, Commit::Now)
                .unwrap(),
            None
        );
    }
    // The same owner name with the old epoch loses too.
    let old_epoch = Fence {
        owner: "live".into(),
        epoch: stale.epoch,
    };
    assert_eq!(
        store
            .append_event("01a", &old_epoch, "{}", None, Commit::Now)
            .unwrap(),
        None
    );
    assert!(store.renew("zombie", LEASE_MS).unwrap().is_empty());
    store
        .append_event("01a", &again[0].1, "{}", Some(&begin), Commit::Now)
        .unwrap()
        .unwrap();
    assert_eq!(store.events("01a", 0, 10).unwrap().len(), 1);
    assert_eq!(
        store.run("01a").unwrap().unwrap().status,
        RunStatus::Running
    );
}

fn renewing_keeps_leases_and_reports_cancels(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let fence = start(store, "01a");
    assert!(!store.request_cancel("nope", "cancelled by `x`").unwrap());
    assert!(store.request_cancel("01a", "cancelled by `x`").unwrap());
    assert!(store.request_cancel("01a", "cancelled by `y`").unwrap());
    let held = store.renew(ME, LEASE_MS).unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].run.as_str(), held[0].epoch), ("01a", fence.epoch));
    assert_eq!(held[0].cancels, 2);
    assert_eq!(held[0].cancelled_by.as_deref(), Some("cancelled by `x`"));
    assert!(store.renew("other", LEASE_MS).unwrap().is_empty());
    assert!(store.interrupt_running(&Scope::Expired).unwrap().is_empty());
}

fn a_released_lease_is_taken_over_at_once(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    let fence = start(store, "01a");
    assert_eq!(store.release(ME).unwrap(), 1);
    assert_eq!(
        store
            .append_event("01a", &fence, "{}", None, Commit::Now)
            .unwrap(),
        None
    );
    let taken = store.interrupt_running(&Scope::Expired).unwrap();
    assert_eq!(taken.len(), 1);
}

fn a_daemon_interrupts_only_its_own_runs_when_it_stops(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("01a", None), ANY).unwrap();
    store.create_run(&new_run("01b", None), ANY).unwrap();
    assert_eq!(ids(&claimed(store, "a", 1)), ["01a"]);
    assert_eq!(ids(&claimed(store, "b", 1)), ["01b"]);
    let mine = store.interrupt_running(&Scope::Owner("a".into())).unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].run, "01a");
    assert_eq!(
        store.run("01b").unwrap().unwrap().status,
        RunStatus::Running
    );
}

/// A session of `token` opened at `at`, which expires a second later.
fn session(id: &str, token: &str, at: i64) -> SessionRecord {
    SessionRecord {
        id_sha256: id.into(),
        token_sha256: token.into(),
        created_ms: at,
        expires_ms: at + 1000,
    }
}

/// Roomy caps, for cases about something else.
const TOTAL: u64 = 100;
const PER_TOKEN: u64 = 16;

fn sessions_are_found_until_they_expire_or_end(t: &Tested) {
    let store = &*t.store;
    assert!(
        store
            .open_session(&session("s1", "a", 100), TOTAL, PER_TOKEN)
            .unwrap()
    );
    assert_eq!(
        store.session("s1", 1099).unwrap(),
        Some(session("s1", "a", 100))
    );
    assert_eq!(store.session("s1", 1100).unwrap(), None, "expired");
    assert_eq!(store.session("nothing", 100).unwrap(), None);

    assert!(
        store
            .open_session(&session("s2", "a", 200), TOTAL, PER_TOKEN)
            .unwrap()
    );
    assert!(store.close_session("s2").unwrap());
    assert!(!store.close_session("s2").unwrap());
    assert_eq!(store.session("s2", 200).unwrap(), None);

    // Pruning drops what has expired by then, and only that.
    assert!(
        store
            .open_session(&session("s3", "b", 3000), TOTAL, PER_TOKEN)
            .unwrap()
    );
    assert_eq!(store.prune_sessions(3000).unwrap(), 1);
    assert_eq!(store.prune_sessions(3000).unwrap(), 0);
    assert!(store.session("s3", 3000).unwrap().is_some());
}

fn a_token_keeps_its_newest_sessions_and_never_ends_another_tokens(t: &Tested) {
    // A script signing in again and again signs only itself out.
    let store = &*t.store;
    let open = |id: &str, token: &str, at: i64| {
        store
            .open_session(&session(id, token, at), TOTAL, PER_TOKEN)
            .unwrap()
    };
    assert!(open("theirs", "other", 0));
    for i in 0..40 {
        assert!(open(&format!("mine{i:02}"), "mine", 1 + i));
    }
    let live = (0..40)
        .filter(|i| store.session(&format!("mine{i:02}"), 50).unwrap().is_some())
        .collect::<Vec<_>>();
    assert_eq!(live, (24..40).collect::<Vec<_>>(), "the newest 16");
    assert!(store.session("theirs", 50).unwrap().is_some());

    // Sessions opened within one millisecond still go oldest first.
    for i in 0..3 {
        let opened = store
            .open_session(&session(&format!("burst{i}"), "burst", 60), TOTAL, 2)
            .unwrap();
        assert!(opened);
    }
    let live = (0..3)
        .filter(|i| store.session(&format!("burst{i}"), 60).unwrap().is_some())
        .collect::<Vec<_>>();
    assert_eq!(live, [1, 2]);
}

fn the_session_cap_refuses_only_when_no_expired_session_can_go(t: &Tested) {
    let store = &*t.store;
    let open = |id: &str, token: &str, at: i64| {
        store
            .open_session(&session(id, token, at), 4, PER_TOKEN)
            .unwrap()
    };
    // `a`'s two sessions expire at 1000 and 1001.
    for (id, token, at) in [
        ("a1", "a", 0),
        ("a2", "a", 1),
        ("b1", "b", 500),
        ("c1", "c", 600),
    ] {
        assert!(open(id, token, at));
    }
    // Full of live sessions: refused, and nobody is signed out for it.
    assert!(!open("d1", "d", 900));
    assert_eq!(store.session("d1", 900).unwrap(), None);
    for id in ["a1", "a2", "b1", "c1"] {
        assert!(store.session(id, 900).unwrap().is_some(), "{id}");
    }
    // Expired sessions make room, whoever's they were.
    assert!(open("d1", "d", 1001));
    assert_eq!(store.prune_sessions(1001).unwrap(), 0, "both went already");
    for id in ["b1", "c1", "d1"] {
        assert!(store.session(id, 1001).unwrap().is_some(), "{id}");
    }
}

fn deleting_a_token_ends_its_sessions(t: &Tested) {
    let store = &*t.store;
    for (sha256, name) in [("aa", "ci"), ("bb", "ro")] {
        let token = TokenRecord {
            name: name.into(),
            roles: vec!["viewer".into()],
            patterns: Vec::new(),
            created_ms: 1,
        };
        store.add_token(sha256, &token).unwrap();
    }
    // `cc` is a token of the config file, which the store does not know.
    for (id, token) in [("s1", "aa"), ("s2", "aa"), ("s3", "bb"), ("s4", "cc")] {
        assert!(
            store
                .open_session(&session(id, token, 100), TOTAL, PER_TOKEN)
                .unwrap()
        );
    }
    assert!(store.delete_token("ci").unwrap());
    let live = ["s1", "s2", "s3", "s4"]
        .into_iter()
        .filter(|id| store.session(id, 100).unwrap().is_some())
        .collect::<Vec<_>>();
    assert_eq!(live, ["s3", "s4"]);
}

fn asked(run: &str, since_ms: i64) -> Approval {
    Approval {
        run: run.into(),
        step: "decide".into(),
        step_name: "Decide".into(),
        message: "keep release 4?".into(),
        roles: vec!["deployer".into()],
        principals: vec!["alice".into()],
        required: 2,
        allow_self: false,
        since_ms,
        deadline_ms: since_ms + 60_000,
        outcome: None,
        votes: Vec::new(),
    }
}

fn vote(principal: &str, approve: bool) -> Decide {
    Decide::Vote(VoteRecord {
        principal: principal.into(),
        approve,
        comment: format!("{principal} says so"),
        time_ms: 5_000,
    })
}

fn an_approval_keeps_its_first_deadline_and_counts_each_person_once(t: &Tested) {
    let store = &*t.store;
    store.create_run(&new_run("r1", None), ANY).unwrap();
    store.create_run(&new_run("r2", None), ANY).unwrap();
    store.create_run(&new_run("r3", None), ANY).unwrap();
    let fences = claim_all(store);
    let first = store.open_approval(&asked("r1", 1_000)).unwrap();
    assert_eq!(first.deadline_ms, 61_000);
    // Asked again after a restart: the first ask stands, deadline and all.
    let again = store.open_approval(&asked("r1", 9_000)).unwrap();
    assert_eq!(again, first);
    store.open_approval(&asked("r2", 2_000)).unwrap();
    store.open_approval(&asked("r3", 3_000)).unwrap();
    assert_eq!(store.open_approvals().unwrap().len(), 3);
    // A run that stops running waits for no one; a withdrawn approval is cancelled.
    store
        .append_event(
            "r3",
            &fences["r3"],
            "{}",
            Some(&run_ended(RunStatus::Cancelled)),
            Commit::Now,
        )
        .unwrap();
    assert_eq!(store.open_approvals().unwrap().len(), 2);
    let (applied, after) = store
        .decide("r3", "decide", &Decide::Withdraw)
        .unwrap()
        .unwrap();
    assert_eq!(
        (applied, after.outcome),
        (Applied::Withdrawn, Some(Outcome::Cancelled))
    );

    let (applied, after) = store
        .decide("r1", "decide", &vote("alice", true))
        .unwrap()
        .unwrap();
    assert_eq!((applied, after.outcome), (Applied::Counted, None));
    let (applied, _) = store
        .decide("r1", "decide", &vote("alice", true))
        .unwrap()
        .unwrap();
    assert_eq!(applied, Applied::Again);
    let (applied, after) = store
        .decide("r1", "decide", &vote("bob", true))
        .unwrap()
        .unwrap();
    assert_eq!(
        (applied, after.outcome),
        (Applied::Counted, Some(Outcome::Approved))
    );
    assert_eq!(
        store.approvals("r1").unwrap()[0]
            .votes
            .iter()
            .map(|v| v.principal.as_str())
            .collect::<Vec<_>>(),
        ["alice", "bob"]
    );
    let (applied, _) = store
        .decide("r1", "decide", &vote("carol", false))
        .unwrap()
        .unwrap();
    assert_eq!(applied, Applied::Closed);
    assert!(
        store
            .decide("r1", "other", &vote("bob", true))
            .unwrap()
            .is_none()
    );

    // r2 times out from its own deadline, not before.
    let expire = |now_ms| Decide::Expire { now_ms };
    assert_eq!(
        store
            .decide("r2", "decide", &expire(61_999))
            .unwrap()
            .unwrap()
            .0,
        Applied::NotYet
    );
    let (applied, after) = store
        .decide("r2", "decide", &expire(62_000))
        .unwrap()
        .unwrap();
    assert_eq!(
        (applied, after.outcome),
        (Applied::Expired, Some(Outcome::TimedOut))
    );
    assert!(store.open_approvals().unwrap().is_empty());

    // A pruned run takes its approvals with it.
    store
        .append_event(
            "r1",
            &fences["r1"],
            "{}",
            Some(&run_ended(RunStatus::Succeeded)),
            Commit::Now,
        )
        .unwrap();
    store.prune(now_ms() + 1000).unwrap();
    assert!(store.approvals("r1").unwrap().is_empty());
    assert_eq!(store.approvals("r2").unwrap().len(), 1);
}
