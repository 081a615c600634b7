-- Deployments and their services: supervision state, env vars, exit history.

-- What a user asked to run. Carries the columns of every source (local, git remote, image) so
-- that the deploy pipeline and the Docker runtime add no table of their own.
CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    project_id    TEXT REFERENCES projects (id) ON DELETE RESTRICT,
    source        TEXT NOT NULL CHECK (source IN ('local', 'remote', 'image')),
    runtime       TEXT,
    version       TEXT,
    remote        TEXT,
    branch        TEXT,
    path          TEXT,
    image         TEXT,
    build_cmd     TEXT,
    run_cmd       TEXT,
    port          INTEGER,
    fixed_port    INTEGER NOT NULL DEFAULT 0,
    health_check  TEXT,                 -- JSON object or NULL (no check)
    restart       TEXT,                 -- JSON object: the restart policy
    limits        TEXT,                 -- JSON object or NULL
    stop_signal   TEXT NOT NULL DEFAULT 'SIGTERM',
    stop_timeout  REAL NOT NULL DEFAULT 10,
    status        TEXT NOT NULL,
    status_detail TEXT,                 -- JSON object or NULL
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX deployments_project ON deployments (project_id);

-- The supervised unit of one deployment: its desired and observed state and the persisted
-- runtime handle (pid + start time, or a container id) that lets a restarted agent adopt it.
CREATE TABLE services (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL UNIQUE REFERENCES deployments (id) ON DELETE CASCADE,
    name          TEXT NOT NULL UNIQUE,
    runtime       TEXT NOT NULL,        -- 'process' | 'docker'
    command       TEXT,                 -- what runs now (run_cmd of the current release)
    cwd           TEXT,                 -- where it runs (the local path or a release directory)
    desired_state TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')),
    state         TEXT NOT NULL,
    handle        TEXT,                 -- JSON, see agent.supervisor.runtime.Handle
    listen_port   INTEGER,
    started_at    REAL,
    restart_count INTEGER NOT NULL DEFAULT 0,
    attempt       INTEGER NOT NULL DEFAULT 0,   -- consecutive failed runs (backoff exponent)
    next_restart_at REAL,
    needs_build   INTEGER NOT NULL DEFAULT 0,
    boot_id       TEXT,                 -- the boot during which state was last written
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);

CREATE TABLE service_env (
    service_id TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    secret     INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (service_id, key)
) WITHOUT ROWID;

-- Every end of a run: exit code or signal, why, and the last lines of stderr.
CREATE TABLE service_exits (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id  TEXT NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    started_at  REAL,
    exited_at   REAL NOT NULL,
    exit_code   INTEGER,
    signal      INTEGER,
    reason      TEXT NOT NULL,
    stderr_tail TEXT NOT NULL DEFAULT '[]'   -- JSON list of strings
);
CREATE INDEX service_exits_service ON service_exits (service_id, id);
