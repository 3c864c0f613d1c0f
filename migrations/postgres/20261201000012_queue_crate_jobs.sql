-- The queue became its own crate that knows jobs, not tickets: a job has a text kind, an
-- optional group (claims can be limited to one: here the batch) and an optional target (the
-- job's subject: an upload's attachment, a create's ticket). Same rows, same states.
ALTER TABLE jobs ALTER COLUMN kind TYPE text USING kind::text;
DROP TYPE job_kind;
ALTER TABLE jobs RENAME COLUMN batch_id TO group_id;
ALTER INDEX jobs_batch_state RENAME TO jobs_group_state;
ALTER TABLE jobs ADD COLUMN target_id uuid;
UPDATE jobs SET target_id = COALESCE(attachment_id, ticket_id);
DROP INDEX jobs_ticket;
DROP INDEX jobs_attachment;
ALTER TABLE jobs DROP COLUMN ticket_id, DROP COLUMN attachment_id;
CREATE INDEX jobs_target ON jobs (target_id);
