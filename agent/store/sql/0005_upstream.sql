-- The control-plane link: every task id seen (so none runs twice) and results not yet acknowledged.
-- The caller's token is never stored.

CREATE TABLE upstream_tasks (
    id          TEXT PRIMARY KEY,
    method      TEXT NOT NULL,
    path        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'done')),
    received_at REAL NOT NULL,
    finished_at REAL,
    response    TEXT,          -- the task_response message, kept until the control plane acks it
    acked_at    REAL
);
CREATE INDEX upstream_tasks_unacked ON upstream_tasks (state, acked_at);
