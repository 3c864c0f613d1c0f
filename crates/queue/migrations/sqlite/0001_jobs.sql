-- The job queue. `attempt` only ever grows: it is the fencing token a claimer holds.
-- A transition that must not use up an attempt raises max_attempts instead.
-- Instants are microseconds since the Unix epoch; ids are 16-byte blobs.
CREATE TABLE jobs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'available'
                  CHECK (state IN ('blocked', 'available', 'running', 'completed', 'failed')),
    group_id      BLOB,
    target_id     BLOB,
    attempt       INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 8,
    run_at        INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    locked_until  INTEGER,
    locked_by     TEXT,
    last_error    TEXT,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    finished_at   INTEGER
);
CREATE INDEX jobs_available ON jobs (run_at, id) WHERE state = 'available';
CREATE INDEX jobs_running ON jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_target ON jobs (target_id);
CREATE INDEX jobs_group_state ON jobs (group_id, state);
