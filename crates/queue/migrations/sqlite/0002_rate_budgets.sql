-- Rate budgets shared by every process of the store: one row per limit (a GCRA theoretical
-- arrival time, a pause, the adaptive state), the processes sharing it, and the refusals
-- (429s) it was told of. Times are microseconds on the host's clock.
CREATE TABLE IF NOT EXISTS rate_budgets (
    name            TEXT PRIMARY KEY,
    ceiling         REAL NOT NULL,
    tat_us          INTEGER NOT NULL DEFAULT 0,
    paused_until_us INTEGER NOT NULL DEFAULT 0,
    cut_rate        REAL NOT NULL DEFAULT 0,
    cut_at_us       INTEGER NOT NULL DEFAULT 0,
    margin          REAL NOT NULL DEFAULT 0,
    margin_at_us    INTEGER NOT NULL DEFAULT 0,
    last_owner      INTEGER NOT NULL DEFAULT 0,
    version         INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_budget_members (
    budget   TEXT NOT NULL,
    member   TEXT NOT NULL,
    ceiling  REAL NOT NULL,
    seen_us  INTEGER NOT NULL,
    PRIMARY KEY (budget, member)
);
CREATE TABLE IF NOT EXISTS rate_budget_refusals (
    budget  TEXT NOT NULL,
    at_us   INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_budget_refusals_at ON rate_budget_refusals (budget, at_us);
