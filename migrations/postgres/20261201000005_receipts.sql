-- `--receipts`: a batch whose tickets without files each get a small text attachment,
-- `import-receipt.txt`, so that a lost create answer can be proven like any ticket with files.
ALTER TABLE batches ADD COLUMN receipts boolean NOT NULL DEFAULT false;
-- A receipt's bytes live here, made once at load: every retry uploads the same bytes.
ALTER TABLE attachments ADD COLUMN inline_content bytea;
