-- no-transaction
-- A ticket an operator cancelled: nothing more is sent for it until `retry`. SQLite cannot
-- change a CHECK constraint in place: the table is rebuilt, with foreign keys off (they are
-- checked before the commit), in one transaction.
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;
CREATE TABLE tickets_new (
    id                 BLOB PRIMARY KEY,
    batch_id           BLOB NOT NULL REFERENCES batches (id),
    project_id         BLOB NOT NULL,
    ref                TEXT NOT NULL,
    line               INTEGER NOT NULL,
    title              TEXT NOT NULL,
    address            TEXT,
    priority           TEXT CHECK (priority IN ('low', 'medium', 'high')),
    contact_name       TEXT,
    contact_email      TEXT,
    fields_digest      TEXT NOT NULL,
    state              TEXT NOT NULL DEFAULT 'pending'
                       CHECK (state IN ('pending', 'creating', 'created', 'failed', 'needs_review',
                                        'cancelled')),
    visibuild_id       TEXT,
    create_sent_at     INTEGER,
    create_unanswered  INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    changed_since_load TEXT,
    created_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    finished_at        INTEGER,
    error_detail       TEXT,
    UNIQUE (project_id, ref)
);
INSERT INTO tickets_new (id, batch_id, project_id, ref, line, title, address, priority,
                         contact_name, contact_email, fields_digest, state, visibuild_id,
                         create_sent_at, create_unanswered, last_error, changed_since_load,
                         created_at, updated_at, finished_at, error_detail)
     SELECT id, batch_id, project_id, ref, line, title, address, priority,
            contact_name, contact_email, fields_digest, state, visibuild_id,
            create_sent_at, create_unanswered, last_error, changed_since_load,
            created_at, updated_at, finished_at, error_detail
       FROM tickets;
DROP TABLE tickets;
ALTER TABLE tickets_new RENAME TO tickets;
CREATE INDEX tickets_batch_state ON tickets (batch_id, state);
CREATE INDEX tickets_finished_at ON tickets (finished_at) WHERE finished_at IS NOT NULL;

-- Every attempt of every job: when, which step, how it ended and the server's answer in
-- words; the last ATTEMPTS_KEPT per job are kept. Pruned with the batch's jobs.
CREATE TABLE IF NOT EXISTS attempts (
    id         INTEGER PRIMARY KEY,
    job_id     INTEGER NOT NULL,
    batch_id   BLOB NOT NULL,
    target_id  BLOB,
    attempt    INTEGER NOT NULL,
    at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    step       TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    answer     TEXT
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id, id);
CREATE INDEX IF NOT EXISTS attempts_target ON attempts (target_id, id);
CREATE INDEX IF NOT EXISTS attempts_batch ON attempts (batch_id);
COMMIT;
PRAGMA foreign_keys = ON;
