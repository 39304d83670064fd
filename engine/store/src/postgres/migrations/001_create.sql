-- Version 1: runs, their steps and events, deploy locks, tokens and the audit log.
--
-- Statuses and sections are the names the API uses, checked here so that no other name can
-- be stored. Identifiers that are sorted (run ids, lock keys, token names) compare byte by
-- byte (`COLLATE "C"`), as SQLite compares them, whatever the database's locale. JSON values
-- (inputs, outputs, a step's error) are kept as the text shiphat wrote, key order included.

CREATE TABLE runs (
    id TEXT COLLATE "C" PRIMARY KEY,
    workflow TEXT NOT NULL,
    inputs TEXT NOT NULL,
    principal TEXT NOT NULL,
    dry_run BOOLEAN NOT NULL,
    concurrency_key TEXT,
    idempotency_key TEXT,
    status TEXT NOT NULL CHECK (status IN
        ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'interrupted')),
    detail TEXT,
    created_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    -- For daemons sharing this database: the daemon that owns the run while it runs, until
    -- when, and a number that grows at each change of owner (fencing). Not used yet.
    lease_owner TEXT,
    lease_expires_ms BIGINT,
    lease_epoch BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX runs_idempotency ON runs (principal, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_workflow ON runs (workflow, id);

CREATE TABLE steps (
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT NOT NULL,
    section TEXT NOT NULL CHECK (section IN ('steps', 'on_failure', 'finally')),
    status TEXT NOT NULL CHECK (status IN
        ('running', 'succeeded', 'failed', 'skipped', 'cancelled', 'interrupted')),
    attempts INTEGER NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    duration_ms DOUBLE PRECISION,
    summary TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',
    error TEXT NOT NULL DEFAULT 'null',
    continued BOOLEAN NOT NULL DEFAULT false,
    -- The event that recorded the step first: steps are listed in that order.
    seq BIGINT NOT NULL,
    PRIMARY KEY (run_id, step)
);

CREATE TABLE events (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    body TEXT NOT NULL
);
CREATE INDEX events_run ON events (run_id, seq);

CREATE TABLE locks (
    key TEXT COLLATE "C" PRIMARY KEY,
    owner TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT
);

CREATE TABLE tokens (
    sha256 TEXT PRIMARY KEY,
    -- A principal is its name: two tokens of one name could act on each other's runs.
    name TEXT COLLATE "C" NOT NULL UNIQUE,
    roles TEXT[] NOT NULL,
    patterns TEXT[] NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    principal TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    remote TEXT NOT NULL,
    status INTEGER NOT NULL,
    outcome TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at_ms);
