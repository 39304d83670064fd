-- Version 7: where each run was started from (`api`, `web`, `slack`, `cli`). NULL for the runs
-- written before, which read as unknown rather than as a guess; no CHECK, so that a source a
-- newer shiphat adds reads as unknown here too. The index serves a workflow's grant history:
-- the audit entries with that workflow as target, newest first.

ALTER TABLE runs ADD COLUMN source TEXT;
CREATE INDEX audit_target ON audit (target, id);
