-- The project gate: before a project's files are uploaded, one of its tickets is created
-- (the probe) and the rest wait for the answer; one row per project, shared by every worker
-- process of the store. `open` for good once a ticket of the project is created; `refused`
-- (with the server's words) until an operator's `retry` re-opens it.
CREATE TABLE project_gates (
    project_id   uuid PRIMARY KEY,
    state        text NOT NULL CHECK (state IN ('probing', 'open', 'refused')),
    probe_ticket uuid,
    reason       text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- A file a create was refused for with a reason uploading cannot be shown to fix (a
-- quarantined file): the server's words, kept across the one fresh upload it gets.
ALTER TABLE attachments ADD COLUMN refused text;
-- Left out of the ticket's create (`--skip-quarantined`), with why; listed in the report.
ALTER TABLE attachments ADD COLUMN skipped text;

-- The server's own error for a failed ticket, as JSON (`code`, `message`, `field`, `key`),
-- for `--json` outputs; `last_error` holds it in words. Project gates keep the refusal's.
ALTER TABLE tickets ADD COLUMN error_detail text;
ALTER TABLE project_gates ADD COLUMN detail text;
