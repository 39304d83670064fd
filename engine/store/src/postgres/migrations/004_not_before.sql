-- Version 4: a run that waits for its deploy window starts no earlier than `not_before_ms`
-- (milliseconds since the Unix epoch; see `claim.rs`). NULL: as soon as its turn comes.

ALTER TABLE runs ADD COLUMN not_before_ms BIGINT;
