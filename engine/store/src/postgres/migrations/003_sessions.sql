-- Version 3: the web page's sessions, so that they outlive a restart and every daemon sharing this
-- database knows them: a browser behind a load balancer needs no sticky sessions.
--
-- Only hashes are kept: the session id is only in the browser's cookie, and the CSRF token is
-- derived from it. A session's token is one of `tokens` or of a daemon's config file, so no
-- foreign key ties the two; deleting a token deletes its sessions by hand. `seq` orders a
-- token's sessions by when they were opened, even two opened within one millisecond.

CREATE TABLE sessions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id_sha256 TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
CREATE INDEX sessions_token ON sessions (token_sha256, created_ms);
CREATE INDEX sessions_expires ON sessions (expires_ms);
