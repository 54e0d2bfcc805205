-- Declared configuration of the Tandem control plane.
--
-- Every change is one transaction that locks the single config_revision row,
-- bumps it by one, writes the tables and appends the change to change_log;
-- the lock serialises writers, so revisions commit in order with no gaps.

CREATE TABLE config_revision (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint  NOT NULL CHECK (revision >= 0)
);
INSERT INTO config_revision (singleton, revision) VALUES (true, 0);

CREATE TABLE pools (
    name       text        PRIMARY KEY,
    -- tandem_core::PoolConfig as JSON (validated before it is written).
    settings   jsonb       NOT NULL,
    -- Revision at which the pool or one of its backends last changed.
    revision   bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE backends (
    pool        text   NOT NULL REFERENCES pools (name) ON DELETE CASCADE,
    address     text   NOT NULL,
    weight      integer NOT NULL CHECK (weight BETWEEN 1 AND 1000),
    role        text   NOT NULL CHECK (role IN ('primary', 'backup')),
    admin_state text   NOT NULL CHECK (admin_state IN ('enabled', 'draining', 'disabled')),
    revision    bigint NOT NULL,
    PRIMARY KEY (pool, address)
);

CREATE TABLE routes (
    host        text   NOT NULL,
    path_prefix text   NOT NULL,
    pool        text   NOT NULL REFERENCES pools (name),
    revision    bigint NOT NULL,
    PRIMARY KEY (host, path_prefix)
);

-- Every committed change, in order: what Watch replays to followers.
CREATE TABLE change_log (
    revision     bigint      PRIMARY KEY,
    -- tandem_core::ConfigChange as JSON.
    change       jsonb       NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- Proxies, agents and other followers, as they last reported.
CREATE TABLE nodes (
    node_id          text        PRIMARY KEY,
    kind             text        NOT NULL,
    zone             text        NOT NULL DEFAULT '',
    applied_revision bigint      NOT NULL DEFAULT 0,
    detail           text        NOT NULL DEFAULT '',
    replica          text        NOT NULL DEFAULT '',
    last_seen        timestamptz NOT NULL DEFAULT now()
);
