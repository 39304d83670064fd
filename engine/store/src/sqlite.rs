//! [`Store`] on an embedded SQLite database.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde_json::Value;

use crate::{
    AuditEntry, Error, Interrupted, Lock, NewRun, Result, Run, RunFilter, RunStatus, StepChange,
    StepRecord, Store, TokenRecord, now_ms,
};

/// How long a connection waits for another (e.g. `shiphat token create` beside a running
/// daemon) to finish writing before giving up. Writes are single short transactions, so
/// seconds are plenty; an error after that points at a stuck process.
const BUSY_TIMEOUT_MS: u32 = 10_000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    inputs TEXT NOT NULL,
    principal TEXT NOT NULL,
    dry_run INTEGER NOT NULL,
    concurrency_key TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL,
    detail TEXT,
    created_ms INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS runs_idempotency ON runs (principal, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE INDEX IF NOT EXISTS runs_workflow ON runs (workflow);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    section TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    started_ms INTEGER,
    finished_ms INTEGER,
    duration_ms REAL,
    summary TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT 'null',
    continued INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events (run_id, seq);
CREATE TABLE IF NOT EXISTS locks (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    roles TEXT NOT NULL,
    patterns TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms INTEGER NOT NULL,
    principal TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    remote TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
";

/// The store in one SQLite file. Writes go through one connection, reads through another, so
/// a reader (an event stream catching up) never waits for a write's fsync.
pub struct SqliteStore {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Open {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let writer = Connection::open(path)?;
        configure(&writer)?;
        writer.execute_batch(SCHEMA)?;
        let reader = Connection::open(path)?;
        configure(&reader)?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    fn write(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (an open transaction rolls
        // back when dropped), so a poisoned lock is still safe to use.
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> MutexGuard<'_, Connection> {
        self.reader.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn configure(conn: &Connection) -> Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS.into()))?;
    // WAL lets readers go on while a write commits; FULL syncs the WAL at every commit, so a
    // committed step start or end survives power loss, not only a process crash.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

const RUN_COLUMNS: &str = "id, workflow, inputs, principal, dry_run, concurrency_key, \
    idempotency_key, status, detail, created_ms, started_ms, finished_ms";

fn run_from_row(row: &Row) -> rusqlite::Result<(Run, String, String)> {
    let status: String = row.get(7)?;
    let inputs: String = row.get(2)?;
    Ok((
        Run {
            id: row.get(0)?,
            workflow: row.get(1)?,
            inputs: Value::Null,
            principal: row.get(3)?,
            dry_run: row.get(4)?,
            concurrency_key: row.get(5)?,
            idempotency_key: row.get(6)?,
            status: RunStatus::Queued,
            detail: row.get(8)?,
            created_ms: row.get(9)?,
            started_ms: row.get(10)?,
            finished_ms: row.get(11)?,
        },
        status,
        inputs,
    ))
}

fn finish_run((mut run, status, inputs): (Run, String, String)) -> Result<Run> {
    run.status = RunStatus::parse(&status).ok_or_else(|| Error::Corrupt {
        table: "runs",
        message: format!("unknown status `{status}` of run `{}`", run.id),
    })?;
    run.inputs = json(&inputs, "runs")?;
    Ok(run)
}

fn json(text: &str, table: &'static str) -> Result<Value> {
    serde_json::from_str(text).map_err(|e| Error::Corrupt {
        table,
        message: e.to_string(),
    })
}

fn query_runs(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Result<Vec<Run>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt
        .query_map(params, run_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.into_iter().map(finish_run).collect()
}

fn split(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store for SqliteStore {
    fn create_run(&self, run: &NewRun) -> Result<(Run, bool)> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        if let Some(key) = &run.idempotency_key {
            let existing = query_runs(
                &tx,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE principal = ?1 AND idempotency_key = ?2"
                ),
                params![run.principal, key],
            )?;
            if let Some(existing) = existing.into_iter().next() {
                return Ok((existing, false));
            }
        }
        let created_ms = now_ms();
        tx.execute(
            "INSERT INTO runs (id, workflow, inputs, principal, dry_run, concurrency_key, \
             idempotency_key, status, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'queued', ?8)",
            params![
                run.id,
                run.workflow,
                run.inputs.to_string(),
                run.principal,
                run.dry_run,
                run.concurrency_key,
                run.idempotency_key,
                created_ms
            ],
        )?;
        tx.commit()?;
        Ok((
            Run {
                id: run.id.clone(),
                workflow: run.workflow.clone(),
                inputs: run.inputs.clone(),
                principal: run.principal.clone(),
                dry_run: run.dry_run,
                concurrency_key: run.concurrency_key.clone(),
                idempotency_key: run.idempotency_key.clone(),
                status: RunStatus::Queued,
                detail: None,
                created_ms,
                started_ms: None,
                finished_ms: None,
            },
            true,
        ))
    }

    fn run(&self, id: &str) -> Result<Option<Run>> {
        let conn = self.read();
        Ok(query_runs(
            &conn,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            params![id],
        )?
        .into_iter()
        .next())
    }

    fn steps(&self, run: &str) -> Result<Vec<StepRecord>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT step, section, status, attempts, started_ms, finished_ms, duration_ms, \
             summary, outputs, error, continued FROM steps WHERE run_id = ?1 ORDER BY seq",
        )?;
        let rows = stmt
            .query_map(params![run], |row| {
                Ok((
                    StepRecord {
                        step: row.get(0)?,
                        section: row.get(1)?,
                        status: row.get(2)?,
                        attempts: row.get(3)?,
                        started_ms: row.get(4)?,
                        finished_ms: row.get(5)?,
                        duration_ms: row.get(6)?,
                        summary: row.get(7)?,
                        outputs: Value::Null,
                        error: Value::Null,
                        continued: row.get(10)?,
                    },
                    row.get::<_, String>(8)?,
                    row.get::<_, String>(9)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.into_iter()
            .map(|(mut step, outputs, error)| {
                step.outputs = json(&outputs, "steps")?;
                step.error = json(&error, "steps")?;
                Ok(step)
            })
            .collect()
    }

    fn list_runs(&self, filter: &RunFilter) -> Result<Vec<Run>> {
        let conn = self.read();
        query_runs(
            &conn,
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR workflow = ?1) \
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id < ?3) \
                 ORDER BY id DESC LIMIT ?4"
            ),
            params![
                filter.workflow,
                filter.status.map(RunStatus::as_str),
                filter.before,
                filter.limit
            ],
        )
    }

    fn transition(
        &self,
        run: &str,
        from: &[RunStatus],
        to: RunStatus,
        detail: Option<&str>,
    ) -> Result<bool> {
        let conn = self.write();
        let from = from
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let now = now_ms();
        let changed = conn.execute(
            "UPDATE runs SET status = ?2, detail = ?3, \
               started_ms = CASE WHEN ?2 = 'running' THEN ?4 ELSE started_ms END, \
               finished_ms = CASE WHEN ?2 IN ('succeeded', 'failed', 'cancelled') THEN ?4 ELSE finished_ms END \
             WHERE id = ?1 AND instr(',' || ?5 || ',', ',' || status || ',') > 0",
            params![run, to.as_str(), detail, now, from],
        )?;
        Ok(changed == 1)
    }

    fn append_event(
        &self,
        run: &str,
        event: &str,
        change: Option<&StepChange>,
    ) -> Result<Option<i64>> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM runs WHERE id = ?1",
                params![run],
                |row| row.get(0),
            )
            .optional()?;
        if status.as_deref() != Some("running") {
            return Ok(None);
        }
        tx.execute(
            "INSERT INTO events (run_id, body) VALUES (?1, ?2)",
            params![run, event],
        )?;
        let seq = tx.last_insert_rowid();
        let now = now_ms();
        match change {
            None => {}
            Some(StepChange::Started {
                step,
                section,
                attempt,
            }) => {
                tx.execute(
                    "INSERT INTO steps (run_id, step, section, status, attempts, started_ms, seq) \
                     VALUES (?1, ?2, ?3, 'running', ?4, ?5, ?6) \
                     ON CONFLICT (run_id, step) DO UPDATE SET status = 'running', \
                       attempts = excluded.attempts, \
                       started_ms = CASE WHEN steps.status = 'interrupted' \
                         THEN excluded.started_ms ELSE steps.started_ms END",
                    params![run, step, section, attempt, now, seq],
                )?;
            }
            Some(StepChange::Finished {
                step,
                section,
                status,
                attempts,
                duration_ms,
                summary,
                outputs,
                error,
                continued,
            }) => {
                let changed = tx.execute(
                    "INSERT INTO steps (run_id, step, section, status, attempts, finished_ms, \
                       duration_ms, summary, outputs, error, continued, seq) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12) \
                     ON CONFLICT (run_id, step) DO UPDATE SET status = excluded.status, \
                       attempts = excluded.attempts, finished_ms = excluded.finished_ms, \
                       duration_ms = excluded.duration_ms, summary = excluded.summary, \
                       outputs = excluded.outputs, error = excluded.error, \
                       continued = excluded.continued \
                     WHERE steps.finished_ms IS NULL",
                    params![
                        run,
                        step,
                        section,
                        status,
                        attempts,
                        now,
                        duration_ms,
                        summary,
                        outputs.to_string(),
                        error.to_string(),
                        continued,
                        seq
                    ],
                )?;
                if changed != 1 {
                    return Err(Error::StepAlreadyFinished {
                        run: run.to_owned(),
                        step: step.clone(),
                    });
                }
            }
        }
        tx.commit()?;
        Ok(Some(seq))
    }

    fn events(&self, run: &str, after: i64, limit: u32) -> Result<Vec<(i64, String)>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, body FROM events WHERE run_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![run, after, limit], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn interrupt_running(&self) -> Result<Vec<Interrupted>> {
        let mut conn = self.write();
        let tx = conn.transaction()?;
        let running = query_runs(
            &tx,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running' ORDER BY id"),
            [],
        )?;
        let mut out = Vec::new();
        for run in running {
            let in_flight = {
                let mut stmt = tx.prepare_cached(
                    "SELECT step FROM steps WHERE run_id = ?1 AND status = 'running' ORDER BY seq",
                )?;
                stmt.query_map(params![run.id], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<Vec<_>>>()?
            };
            tx.execute(
                "UPDATE steps SET status = 'interrupted' WHERE run_id = ?1 AND status = 'running'",
                params![run.id],
            )?;
            let detail = if in_flight.is_empty() {
                "interrupted between steps".to_owned()
            } else {
                format!("interrupted during step `{}`", in_flight.join("`, `"))
            };
            tx.execute(
                "UPDATE runs SET status = 'interrupted', detail = ?2 WHERE id = ?1",
                params![run.id, detail],
            )?;
            out.push(Interrupted {
                run: run.id,
                workflow: run.workflow,
                in_flight,
            });
        }
        tx.commit()?;
        Ok(out)
    }

    fn runs_with_status(&self, status: RunStatus) -> Result<Vec<Run>> {
        let conn = self.read();
        query_runs(
            &conn,
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE status = ?1 ORDER BY id"),
            params![status.as_str()],
        )
    }

    fn lock(&self, key: &str) -> Result<Option<Lock>> {
        Ok(self.locks()?.into_iter().find(|l| l.key == key))
    }

    fn locks(&self) -> Result<Vec<Lock>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT key, owner, reason, created_ms, expires_ms FROM locks ORDER BY key",
        )?;
        let rows = stmt
            .query_map([], |row| {
                Ok(Lock {
                    key: row.get(0)?,
                    owner: row.get(1)?,
                    reason: row.get(2)?,
                    created_ms: row.get(3)?,
                    expires_ms: row.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let now = now_ms();
        Ok(rows
            .into_iter()
            .filter(|l| l.expires_ms.is_none_or(|e| e > now))
            .collect())
    }

    fn put_lock(&self, lock: &Lock) -> Result<()> {
        let conn = self.write();
        conn.execute(
            "INSERT OR REPLACE INTO locks (key, owner, reason, created_ms, expires_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                lock.key,
                lock.owner,
                lock.reason,
                lock.created_ms,
                lock.expires_ms
            ],
        )?;
        Ok(())
    }

    fn delete_lock(&self, key: &str) -> Result<bool> {
        let conn = self.write();
        Ok(conn.execute("DELETE FROM locks WHERE key = ?1", params![key])? == 1)
    }

    fn add_token(&self, sha256_hex: &str, token: &TokenRecord) -> Result<()> {
        let conn = self.write();
        conn.execute(
            "INSERT INTO tokens (sha256, name, roles, patterns, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                sha256_hex,
                token.name,
                token.roles.join(","),
                token.patterns.join(","),
                token.created_ms
            ],
        )?;
        Ok(())
    }

    fn token(&self, sha256_hex: &str) -> Result<Option<TokenRecord>> {
        let conn = self.read();
        Ok(conn
            .query_row(
                "SELECT name, roles, patterns, created_ms FROM tokens WHERE sha256 = ?1",
                params![sha256_hex],
                |row| {
                    Ok(TokenRecord {
                        name: row.get(0)?,
                        roles: split(&row.get::<_, String>(1)?),
                        patterns: split(&row.get::<_, String>(2)?),
                        created_ms: row.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let conn = self.write();
        conn.execute(
            "INSERT INTO audit (at_ms, principal, action, target, remote, status, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                entry.at_ms,
                entry.principal,
                entry.action,
                entry.target,
                entry.remote,
                entry.status,
                entry.outcome
            ],
        )?;
        Ok(())
    }

    fn audit_log(&self, limit: u32) -> Result<Vec<AuditEntry>> {
        let conn = self.read();
        let mut stmt = conn.prepare_cached(
            "SELECT at_ms, principal, action, target, remote, status, outcome FROM audit \
             ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt
            .query_map(params![limit], |row| {
                Ok(AuditEntry {
                    at_ms: row.get(0)?,
                    principal: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    remote: row.get(4)?,
                    status: row.get(5)?,
                    outcome: row.get(6)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn prune(&self, before_ms: i64) -> Result<usize> {
        let conn = self.write();
        Ok(conn.execute(
            "DELETE FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled') \
             AND finished_ms < ?1",
            params![before_ms],
        )?)
    }

    fn integrity_check(&self) -> Result<String> {
        let conn = self.read();
        Ok(conn.query_row("PRAGMA integrity_check", [], |row| row.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("db/shiphat.sqlite")).unwrap();
        (dir, store)
    }

    fn new_run(id: &str, key: Option<&str>) -> NewRun {
        NewRun {
            id: id.into(),
            workflow: "wf".into(),
            inputs: serde_json::json!({"a": 1}),
            principal: "ci".into(),
            dry_run: false,
            concurrency_key: None,
            idempotency_key: key.map(Into::into),
        }
    }

    fn finished(step: &str) -> StepChange {
        StepChange::Finished {
            step: step.into(),
            section: "steps".into(),
            status: "succeeded".into(),
            attempts: 1,
            duration_ms: 1.5,
            summary: "done".into(),
            outputs: serde_json::json!({"x": 1}),
            error: Value::Null,
            continued: false,
        }
    }

    #[test]
    fn idempotency_key_returns_the_first_run() {
        let (_dir, store) = store();
        let (first, created) = store.create_run(&new_run("01a", Some("k"))).unwrap();
        assert!(created);
        let (again, created) = store.create_run(&new_run("01b", Some("k"))).unwrap();
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

    #[test]
    fn events_are_refused_unless_running_and_steps_finish_once() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        assert_eq!(store.append_event("01a", "{}", None).unwrap(), None);
        assert!(
            store
                .transition("01a", &[RunStatus::Queued], RunStatus::Running, None)
                .unwrap()
        );
        let start = StepChange::Started {
            step: "s".into(),
            section: "steps".into(),
            attempt: 1,
        };
        store
            .append_event("01a", "{\"e\":1}", Some(&start))
            .unwrap()
            .unwrap();
        store
            .append_event("01a", "{\"e\":2}", Some(&finished("s")))
            .unwrap()
            .unwrap();
        let again = store.append_event("01a", "{\"e\":3}", Some(&finished("s")));
        assert!(
            matches!(again, Err(Error::StepAlreadyFinished { .. })),
            "{again:?}"
        );
        let steps = store.steps("01a").unwrap();
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].status, "succeeded");
        assert_eq!(steps[0].outputs, serde_json::json!({"x": 1}));
        assert_eq!(store.events("01a", 0, 100).unwrap().len(), 2);
    }

    #[test]
    fn interrupt_running_names_the_step_in_flight() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        store
            .transition("01a", &[RunStatus::Queued], RunStatus::Running, None)
            .unwrap();
        let start = StepChange::Started {
            step: "deploy".into(),
            section: "steps".into(),
            attempt: 1,
        };
        store.append_event("01a", "{}", Some(&start)).unwrap();
        let interrupted = store.interrupt_running().unwrap();
        assert_eq!(interrupted[0].in_flight, vec!["deploy".to_owned()]);
        let run = store.run("01a").unwrap().unwrap();
        assert_eq!(run.status, RunStatus::Interrupted);
        assert_eq!(store.steps("01a").unwrap()[0].status, "interrupted");
        assert!(store.interrupt_running().unwrap().is_empty());
        assert_eq!(store.integrity_check().unwrap(), "ok");
    }

    #[test]
    fn prune_keeps_unfinished_runs() {
        let (_dir, store) = store();
        store.create_run(&new_run("01a", None)).unwrap();
        store.create_run(&new_run("01b", None)).unwrap();
        store
            .transition("01a", &[RunStatus::Queued], RunStatus::Succeeded, None)
            .unwrap();
        assert_eq!(store.prune(now_ms() + 1000).unwrap(), 1);
        assert!(store.run("01a").unwrap().is_none());
        assert!(store.run("01b").unwrap().is_some());
    }

    #[test]
    fn expired_locks_are_not_held() {
        let (_dir, store) = store();
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
}
