-- The raft group's members as its leader last applied them: written by the
-- leader whenever the membership changes (and once when it starts leading).
-- A replica starting with an empty state directory consults it when no
-- other replica answers: a voter of a group of several must not come back
-- with a forgotten vote.
CREATE TABLE raft_members (
    id          bigint PRIMARY KEY CHECK (id > 0),
    address     text   NOT NULL,
    suffrage    text   NOT NULL CHECK (suffrage IN ('voter', 'learner')),
    -- The leader's term and applied raft index when it wrote this record:
    -- an older leader never overwrites a newer record.
    term        bigint NOT NULL,
    raft_index  bigint NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
