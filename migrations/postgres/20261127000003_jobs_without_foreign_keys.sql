-- The queue's references to batches, tickets and attachments are written in the same
-- transaction as the rows they name and never deleted; checking three foreign keys per job
-- row cost more than half of a 100,000-ticket load. The store keeps them consistent.
ALTER TABLE jobs DROP CONSTRAINT jobs_batch_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_ticket_id_fkey;
ALTER TABLE jobs DROP CONSTRAINT jobs_attachment_id_fkey;
