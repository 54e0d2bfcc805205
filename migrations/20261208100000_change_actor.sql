-- Who made each change: the caller's name and how it authenticated
-- ("alice (access-file token)", "admin (admin token)", "shop-ci
-- (certificate)"). NULL for rows written before actors were recorded and
-- for changes the control plane makes by itself.
ALTER TABLE change_log ADD COLUMN actor text;
