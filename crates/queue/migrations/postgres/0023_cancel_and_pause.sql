-- no-transaction
-- A cancelled job: an operator's, never claimed again until revived. A new enum value
-- cannot be used in the transaction that adds it, so this one runs outside any.
ALTER TYPE job_state ADD VALUE IF NOT EXISTS 'cancelled';

-- Paused groups: claims skip their jobs. A row with no group pauses every group.
CREATE TABLE IF NOT EXISTS queue_pauses (
    scope     text PRIMARY KEY,  -- 'all', or the group's id
    group_id  uuid,
    paused_at timestamptz NOT NULL DEFAULT now()
);
