-- Requests to Visibuild and S3 per minute, by endpoint and answer, added to by every worker
-- process (from its client's counters, every few seconds), so that the dashboard and
-- /metrics see the 429s and bytes of all processes sharing this database.
CREATE TABLE minute_counters (
    minute   timestamptz NOT NULL,  -- start of the minute (date_trunc)
    endpoint text NOT NULL,         -- presign | upload | create
    status   smallint NOT NULL,     -- the HTTP status; 0 = no answer (connection failed, timeout)
    requests bigint NOT NULL DEFAULT 0,
    bytes    bigint NOT NULL DEFAULT 0,  -- bytes sent by successful uploads
    PRIMARY KEY (minute, endpoint, status)
);

-- Throughput over time reads recent uploads and creates by time, not whole tables.
CREATE INDEX attachments_uploaded_at ON attachments (uploaded_at) WHERE uploaded_at IS NOT NULL;
CREATE INDEX tickets_finished_at ON tickets (finished_at) WHERE finished_at IS NOT NULL;
