-- The job queue. `attempt` only ever grows: it is the fencing token a claimer holds.
-- A transition that must not use up an attempt raises max_attempts instead.
-- IF NOT EXISTS: an importer database made before the queue was its own crate already has
-- this table (its own migration turned the old one into this shape).
DO $$ BEGIN
    CREATE TYPE job_state AS ENUM ('blocked', 'available', 'running', 'completed', 'failed');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS jobs (
    id            bigserial PRIMARY KEY,
    kind          text NOT NULL,
    state         job_state NOT NULL DEFAULT 'available',
    group_id      uuid,
    target_id     uuid,
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
CREATE INDEX IF NOT EXISTS jobs_available ON jobs (run_at, id) WHERE state = 'available';
CREATE INDEX IF NOT EXISTS jobs_running ON jobs (locked_until) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_target ON jobs (target_id);
CREATE INDEX IF NOT EXISTS jobs_group_state ON jobs (group_id, state);
