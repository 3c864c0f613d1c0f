-- A ref loaded again with other manifest fields keeps what was first loaded (it is never
-- duplicated); which fields differed, and on which manifest line, is noted here for `report`
-- (changed_fields) and `status`. Cleared when the ref is loaded again unchanged.
ALTER TABLE tickets ADD COLUMN changed_since_load text;
