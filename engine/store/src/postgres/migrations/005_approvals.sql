-- Version 5: the approvals runs wait for, one JSON document each (see `approval.rs`), changed
-- only under the row's lock. `open` says it is not decided yet, for the "waiting" views.

CREATE TABLE approvals (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT COLLATE "C" NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    step TEXT COLLATE "C" NOT NULL,
    open BOOLEAN NOT NULL,
    body TEXT NOT NULL,
    UNIQUE (run_id, step)
);
CREATE INDEX approvals_open ON approvals (open) WHERE open;
