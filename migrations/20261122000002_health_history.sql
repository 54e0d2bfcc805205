-- Backend health transitions decided through raft, recorded by the leader
-- when Postgres is reachable (caught up later when it was not). Keyed by the
-- raft index, so recording twice is harmless.
CREATE TABLE health_history (
    raft_index  bigint      NOT NULL,
    pool        text        NOT NULL,
    address     text        NOT NULL,
    from_state  text        NOT NULL,
    to_state    text        NOT NULL,
    reason      text        NOT NULL,
    decided_at  timestamptz NOT NULL,
    PRIMARY KEY (raft_index, pool, address)
);
CREATE INDEX health_history_backend ON health_history (pool, address, decided_at);
