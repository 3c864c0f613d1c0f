-- Budgets that learn the server's limit (`--api-rate auto`): whether a live member learns,
-- the learned limit and its last 429, the origin it was learned for; and what was learned
-- per origin, kept for the next run. Times are microseconds on the store's clock.
ALTER TABLE rate_budgets ADD COLUMN learning int8 NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN learned float8 NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN learned_at_us int8 NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN refused_rate float8 NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN refused_at_us int8 NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN origin text NOT NULL DEFAULT '';
ALTER TABLE rate_budget_members ADD COLUMN learning int8 NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS rate_learned (
    budget        text NOT NULL,
    origin        text NOT NULL,
    learned       float8 NOT NULL,
    refused_rate  float8 NOT NULL,
    refused_at_us int8 NOT NULL,
    updated_at_us int8 NOT NULL,
    PRIMARY KEY (budget, origin)
);
