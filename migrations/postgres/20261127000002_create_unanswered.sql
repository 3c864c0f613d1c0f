-- A create request left and no definite answer came back (yet). Unlike create_sent_at
-- ("a create was ever sent"), this is cleared by a definite answer, fenced by the claim.
ALTER TABLE tickets ADD COLUMN create_unanswered boolean NOT NULL DEFAULT false;
-- A create that was in flight when this column arrived may have landed.
UPDATE tickets SET create_unanswered = true WHERE state = 'creating';
