-- Foundation: instance metadata, users and sessions, machine tokens, projects, the event outbox.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE COLLATE NOCASE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

-- A session is one login; its refresh tokens form one rotation family.
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     REAL NOT NULL,
    expires_at     REAL NOT NULL,
    revoked_at     REAL,
    revoked_reason TEXT
);
CREATE INDEX sessions_user ON sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    used_at    REAL
);
CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    token_hash   TEXT NOT NULL UNIQUE,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'developer', 'viewer')),
    created_at   REAL NOT NULL,
    revoked_at   REAL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT '',
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL
);

-- The outbox: every event, written in the transaction of the change that caused it.
CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT NOT NULL UNIQUE,
    type       TEXT NOT NULL,
    created_at REAL NOT NULL,
    data       TEXT NOT NULL
);

-- How far each durable consumer (webhooks, upstream) has read the outbox.
CREATE TABLE consumer_cursors (
    name     TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
