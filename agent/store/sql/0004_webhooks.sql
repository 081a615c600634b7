-- Webhooks: the hooks, one delivery per (hook, event), and the log of every attempt.

CREATE TABLE webhooks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    events          TEXT NOT NULL,              -- JSON array of event types, or ["*"]
    secret          TEXT NOT NULL,              -- as given or generated; needed to sign
    enabled         INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    after_seq       INTEGER NOT NULL,           -- receives only events with seq > after_seq
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL,
    event_seq       INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'delivering', 'succeeded', 'failed', 'cancelled')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    interrupted     INTEGER NOT NULL DEFAULT 0,  -- attempts cut short by an agent crash
    next_attempt_at REAL,
    last_status_code INTEGER,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    completed_at    REAL,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_hook ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_hook_due ON webhook_deliveries (webhook_id, status, next_attempt_at);
CREATE INDEX webhook_deliveries_done ON webhook_deliveries (completed_at);

CREATE TABLE webhook_attempts (
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number           INTEGER NOT NULL,
    started_at       REAL NOT NULL,
    duration_ms      REAL,
    outcome          TEXT NOT NULL
                     CHECK (outcome IN ('in_progress', 'succeeded', 'failed', 'refused',
                                        'interrupted')),
    status_code      INTEGER,
    error            TEXT,
    response_excerpt TEXT,
    next_attempt_at  REAL,
    PRIMARY KEY (delivery_id, number)
);
