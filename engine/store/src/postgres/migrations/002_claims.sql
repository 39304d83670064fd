-- Version 2: what claims, leases and cancels across daemons keep (see `claim.rs`).
--
-- `forced`: an admin forced the run past the locks, for its next start. `cancels`: how many
-- times a cancel was asked through the database (by a daemon that does not run the run);
-- the daemon that runs it reads it when it renews its lease, with `cancelled_by`.

ALTER TABLE runs
    ADD COLUMN forced BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN cancels INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN cancelled_by TEXT;

-- The runs of a key still to run or running: what a claim and an exclusive admission look at.
CREATE INDEX runs_key ON runs (concurrency_key, id)
    WHERE status IN ('queued', 'running') AND concurrency_key IS NOT NULL;
-- A daemon's leases, renewed every few seconds.
CREATE INDEX runs_lease ON runs (lease_owner) WHERE status = 'running';
