-- The import queue: batches of tickets, their attachments, and the jobs that move them.

CREATE TYPE ticket_state AS ENUM ('pending', 'creating', 'created', 'failed', 'needs_review');
CREATE TYPE attachment_state AS ENUM ('pending', 'uploaded', 'failed');
CREATE TYPE job_state AS ENUM ('blocked', 'available', 'running', 'completed', 'failed');
CREATE TYPE job_kind AS ENUM ('upload', 'create_ticket');

-- One loaded manifest. Re-loading the same manifest (same name) adds to the same batch.
CREATE TABLE batches (
    id            uuid PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    manifest_path text NOT NULL,
    files_root    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- One row per manifest ticket; (project_id, ref) is the idempotency key.
CREATE TABLE tickets (
    id             uuid PRIMARY KEY,
    batch_id       uuid NOT NULL REFERENCES batches (id),
    project_id     uuid NOT NULL,
    ref            text NOT NULL,
    line           bigint NOT NULL,
    title          text NOT NULL,
    address        text,
    priority       text CHECK (priority IN ('low', 'medium', 'high')),
    contact_name   text,
    contact_email  text,
    -- digest of the manifest fields, to report a ref whose fields changed on re-load
    fields_digest  text NOT NULL,
    state          ticket_state NOT NULL DEFAULT 'pending',
    visibuild_id   text,
    -- set (durably) before a create request leaves: a later attempt knows one may have landed
    create_sent_at timestamptz,
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    UNIQUE (project_id, ref)
);
CREATE INDEX tickets_batch_state ON tickets (batch_id, state);

-- One file of a ticket. The same file named by two tickets is two rows (a key links once).
CREATE TABLE attachments (
    id            uuid PRIMARY KEY,
    ticket_id     uuid NOT NULL REFERENCES tickets (id),
    position      int NOT NULL,
    path          text NOT NULL,   -- as written in the manifest
    resolved_path text NOT NULL,   -- absolute path read from disk
    filename      text NOT NULL,
    content_type  text NOT NULL,
    size          bigint NOT NULL,
    md5           text,            -- base64, set once hashed
    key           text,            -- Visibuild key, set once presigned
    state         attachment_state NOT NULL DEFAULT 'pending',
    last_error    text,
    uploaded_at   timestamptz,
    UNIQUE (ticket_id, position)
);
CREATE INDEX attachments_ticket ON attachments (ticket_id);
CREATE INDEX attachments_key ON attachments (key) WHERE key IS NOT NULL;

-- Hash cache: a file's MD5 is computed once per (path, size, mtime).
CREATE TABLE file_hashes (
    resolved_path text PRIMARY KEY,
    size          bigint NOT NULL,
    mtime_ns      bigint NOT NULL,
    md5           text NOT NULL
);

-- The job queue. `attempt` only ever grows: it is the fencing token a claimer holds.
-- A reschedule that must not use up an attempt raises max_attempts instead.
CREATE TABLE jobs (
    id            bigserial PRIMARY KEY,
    kind          job_kind NOT NULL,
    state         job_state NOT NULL DEFAULT 'available',
    batch_id      uuid REFERENCES batches (id),
    ticket_id     uuid REFERENCES tickets (id),
    attachment_id uuid REFERENCES attachments (id),
    attempt       int NOT NULL DEFAULT 0,
    max_attempts  int NOT NULL DEFAULT 8,
    run_at        timestamptz NOT NULL DEFAULT now(),
    locked_until  timestamptz,
    locked_by     text,
    last_error    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);
CREATE INDEX jobs_available ON jobs (run_at, id) WHERE state = 'available';
CREATE INDEX jobs_running ON jobs (locked_until) WHERE state = 'running';
CREATE INDEX jobs_ticket ON jobs (ticket_id);
CREATE INDEX jobs_attachment ON jobs (attachment_id);
CREATE INDEX jobs_batch_state ON jobs (batch_id, state);
