-- The control database's identity, made with it: every revision belongs to
-- (id, generation). The generation changes whenever history may have been
-- rewritten (a restore; a start-up that finds the database behind what the
-- replicas already served, i.e. a failover that lost the last
-- transactions). Followers whose identity differs take a full snapshot.
CREATE TABLE store_identity (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid    NOT NULL DEFAULT gen_random_uuid(),
    generation bigint  NOT NULL DEFAULT 1 CHECK (generation >= 1),
    -- The revision at which this generation began (a restore's revision
    -- has no change_log row: its generation starts with a snapshot).
    since_revision bigint NOT NULL DEFAULT 0,
    -- Why it last changed ("created", "restore", "the database is behind
    -- revision N served before").
    reason     text    NOT NULL DEFAULT 'created',
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO store_identity (singleton, since_revision)
    SELECT true, revision FROM config_revision;
