-- The import's own tables in the embedded store (the queue's `jobs` table is the queue
-- crate's). The same shape as in Postgres, in SQLite's types: ids are 16-byte blobs,
-- instants microseconds since the Unix epoch, states text, flags 0/1.

CREATE TABLE batches (
    id            BLOB PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    manifest_path TEXT NOT NULL,
    files_root    TEXT NOT NULL,
    receipts      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER))
);

-- One row per manifest ticket; (project_id, ref) is the idempotency key.
CREATE TABLE tickets (
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
                       CHECK (state IN ('pending', 'creating', 'created', 'failed', 'needs_review')),
    visibuild_id       TEXT,
    create_sent_at     INTEGER,
    create_unanswered  INTEGER NOT NULL DEFAULT 0,
    last_error         TEXT,
    changed_since_load TEXT,
    created_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    updated_at         INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000000 AS INTEGER)),
    finished_at        INTEGER,
    UNIQUE (project_id, ref)
);
CREATE INDEX tickets_batch_state ON tickets (batch_id, state);
CREATE INDEX tickets_finished_at ON tickets (finished_at) WHERE finished_at IS NOT NULL;

-- One file of a ticket. The same file named by two tickets is two rows (a key links once).
CREATE TABLE attachments (
    id             BLOB PRIMARY KEY,
    ticket_id      BLOB NOT NULL REFERENCES tickets (id),
    position       INTEGER NOT NULL,
    path           TEXT NOT NULL,
    resolved_path  TEXT NOT NULL,
    root           TEXT,
    filename       TEXT NOT NULL,
    content_type   TEXT NOT NULL,
    size           INTEGER NOT NULL,
    mtime_ns       INTEGER,
    md5            TEXT,
    key            TEXT,
    state          TEXT NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'uploaded', 'failed')),
    last_error     TEXT,
    change_note    TEXT,
    inline_content BLOB,
    uploaded_at    INTEGER,
    UNIQUE (ticket_id, position)
);
CREATE INDEX attachments_ticket ON attachments (ticket_id);
CREATE INDEX attachments_key ON attachments (key) WHERE key IS NOT NULL;
CREATE INDEX attachments_uploaded_at ON attachments (uploaded_at) WHERE uploaded_at IS NOT NULL;

-- Hash cache: a file's MD5 is computed once per (path, size, mtime).
CREATE TABLE file_hashes (
    resolved_path TEXT PRIMARY KEY,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    md5           TEXT NOT NULL
);

-- Requests to Visibuild and S3 per minute, by endpoint and answer, from every process.
CREATE TABLE minute_counters (
    minute   INTEGER NOT NULL,  -- start of the minute
    endpoint TEXT NOT NULL,
    status   INTEGER NOT NULL,  -- the HTTP status; 0 = no answer
    requests INTEGER NOT NULL DEFAULT 0,
    bytes    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, endpoint, status)
);
