-- What the file looked like when it was last read (loaded, then uploaded): a file whose size
-- or modification time differs at upload time changed since, and the change is noted.
ALTER TABLE attachments ADD COLUMN mtime_ns bigint;
ALTER TABLE attachments ADD COLUMN change_note text;
-- The folder a file is opened inside for hashing and upload (the batch's files root, or the
-- file's own folder for a path loaded with --allow-outside-root). NULL on rows loaded before.
ALTER TABLE attachments ADD COLUMN root text;
