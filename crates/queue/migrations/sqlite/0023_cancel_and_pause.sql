-- A cancelled job: an operator's, never claimed again until revived. SQLite cannot change a
-- CHECK constraint in place: the table is rebuilt (nothing references it), keeping its ids'
-- sequence so an id is never handed out twice.
CREATE TABLE jobs_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'available'
                  CHECK (state IN ('blocked', 'available', 'running', 'completed', 'failed',
                                   'cancelled')),
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
INSERT INTO jobs_new SELECT id, kind, state, group_id, target_id, attempt, max_attempts, run_at,
                            locked_until, locked_by, last_error, created_at, updated_at,
                            finished_at
                       FROM jobs;
DELETE FROM sqlite_sequence WHERE name = 'jobs_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs_new', seq FROM sqlite_sequence WHERE name = 'jobs';
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
CREATE INDEX jobs_available ON jobs (run_at, id) WHERE state = 'available';
CREATE INDEX jobs_running ON jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_target ON jobs (target_id);
CREATE INDEX jobs_group_state ON jobs (group_id, state);

-- Paused groups: claims skip their jobs. A row with no group pauses every group.
CREATE TABLE queue_pauses (
    scope     TEXT PRIMARY KEY,  -- 'all', or the group's id
    group_id  BLOB,
    paused_at INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
);
