-- The format of each change_log row's `change` (tandem_core::ConfigChange as
-- JSON). Rows written before this column existed are version 1. A build
-- refuses rows from a newer format instead of misreading them.
ALTER TABLE change_log ADD COLUMN format_version integer NOT NULL DEFAULT 1;
