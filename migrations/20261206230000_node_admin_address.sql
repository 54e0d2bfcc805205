-- Where each proxy's admin port answers (ReportApplied's admin_address),
-- so the control plane can ask a proxy to explain a request (Explain).
-- A table of its own: the nodes table's row is rewritten by every report,
-- this one only when the address is given.
CREATE TABLE node_admin (
    node_id       text PRIMARY KEY,
    admin_address text NOT NULL,
    updated       timestamptz NOT NULL DEFAULT now()
);
