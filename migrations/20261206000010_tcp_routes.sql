-- TCP (layer 4) routes: every proxy listens on `listen` (ip:port) and
-- forwards each connection to `pool`. The listen address is the identity.
CREATE TABLE tcp_routes (
    listen   text   PRIMARY KEY,
    pool     text   NOT NULL REFERENCES pools (name),
    revision bigint NOT NULL
);

-- A pool's declared order: a single_active pool sends to the first usable
-- member. Existing backends are numbered by address, which is the order
-- they were already taken in on ties.
ALTER TABLE backends ADD COLUMN position integer NOT NULL DEFAULT 0 CHECK (position >= 0);
UPDATE backends AS b SET position = o.n
FROM (SELECT pool, address, row_number() OVER (PARTITION BY pool ORDER BY address) AS n
      FROM backends) AS o
WHERE b.pool = o.pool AND b.address = o.address;

-- What a proxy last said of its TCP listeners, and the alerts it raises.
ALTER TABLE nodes
    ADD COLUMN listeners jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN alerts    jsonb NOT NULL DEFAULT '[]';
