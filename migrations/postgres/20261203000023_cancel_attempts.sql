-- no-transaction
-- A ticket an operator cancelled: nothing more is sent for it until `retry`. A new enum
-- value cannot be used in the transaction that adds it, so this file runs outside one
-- (each statement can run again).
ALTER TYPE ticket_state ADD VALUE IF NOT EXISTS 'cancelled';

-- Every attempt of every job: when, which step, how it ended and the server's answer in
-- words; the last ATTEMPTS_KEPT per job are kept. Pruned with the batch's jobs.
CREATE TABLE IF NOT EXISTS attempts (
    id         bigserial PRIMARY KEY,
    job_id     bigint NOT NULL,
    batch_id   uuid NOT NULL,
    target_id  uuid,
    attempt    int NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    step       text NOT NULL,
    outcome    text NOT NULL,
    answer     text
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id, id);
CREATE INDEX IF NOT EXISTS attempts_target ON attempts (target_id, id);
CREATE INDEX IF NOT EXISTS attempts_batch ON attempts (batch_id);
