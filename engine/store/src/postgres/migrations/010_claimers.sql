-- Version 10: the daemons that claim runs from this database, each with when it last claimed
-- (by the database's clock), so that a claim takes its even share of the runs that may start
-- rather than all it may (`fair_share` in claim.rs). A daemon's row goes when it stops; one
-- that died is no longer counted once its last claim is old, and its row goes within the hour.

CREATE TABLE daemons (
    owner TEXT COLLATE "C" PRIMARY KEY,
    seen_ms BIGINT NOT NULL
);
