-- Rate budgets shared by every process of the store: one row per limit (a GCRA theoretical
-- arrival time, a pause, the adaptive state), the processes sharing it, and the refusals
-- (429s) it was told of. Times are microseconds on the store's clock.
CREATE TABLE IF NOT EXISTS rate_budgets (
    name            text PRIMARY KEY,
    ceiling         float8 NOT NULL,
    tat_us          int8 NOT NULL DEFAULT 0,
    paused_until_us int8 NOT NULL DEFAULT 0,
    cut_rate        float8 NOT NULL DEFAULT 0,
    cut_at_us       int8 NOT NULL DEFAULT 0,
    margin          float8 NOT NULL DEFAULT 0,
    margin_at_us    int8 NOT NULL DEFAULT 0,
    last_owner      int8 NOT NULL DEFAULT 0,
    version         int8 NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS rate_budget_members (
    budget   text NOT NULL,
    member   text NOT NULL,
    ceiling  float8 NOT NULL,
    seen_us  int8 NOT NULL,
    PRIMARY KEY (budget, member)
);
CREATE TABLE IF NOT EXISTS rate_budget_refusals (
    budget  text NOT NULL,
    at_us   int8 NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_budget_refusals_at ON rate_budget_refusals (budget, at_us);
