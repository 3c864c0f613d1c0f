-- Budgets that learn the server's limit (`--api-rate auto`): whether a live member learns,
-- the learned limit and its last 429, the origin it was learned for; and what was learned
-- per origin, kept for the next run. Times are microseconds on the host's clock.
ALTER TABLE rate_budgets ADD COLUMN learning INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN learned REAL NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN learned_at_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN refused_rate REAL NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN refused_at_us INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rate_budgets ADD COLUMN origin TEXT NOT NULL DEFAULT '';
ALTER TABLE rate_budget_members ADD COLUMN learning INTEGER NOT NULL DEFAULT 0;
CREATE TABLE IF NOT EXISTS rate_learned (
    budget        TEXT NOT NULL,
    origin        TEXT NOT NULL,
    learned       REAL NOT NULL,
    refused_rate  REAL NOT NULL,
    refused_at_us INTEGER NOT NULL,
    updated_at_us INTEGER NOT NULL,
    PRIMARY KEY (budget, origin)
);
