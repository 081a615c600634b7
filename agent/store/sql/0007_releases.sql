-- Deployments from git: the runs of the deploy pipeline, credentials of private repositories,
-- and what a service runs now (its release) and is about to run (a candidate during a switch).

-- The release a service's current run was started from (NULL for local deployments), what
-- that release adds to the environment ({"path_dirs": [...], "variables": {...}}: the
-- toolchain's bin dir, a Python venv), and the candidate run of a switch in progress
-- ({"release_id", "port", "run_name", "handle"}), written before the candidate is spawned so
-- that an agent killed mid-switch finds it (and stops it) on its next start.
ALTER TABLE services ADD COLUMN release_id TEXT;
ALTER TABLE services ADD COLUMN run_env TEXT;
ALTER TABLE services ADD COLUMN pending_run TEXT;

-- One row per run of the pipeline (a deploy or a rollback). The deployment's own status and
-- status_detail mirror its newest run.
CREATE TABLE deploy_runs (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('deploy', 'rollback')),
    status        TEXT NOT NULL,
    detail        TEXT NOT NULL,       -- JSON: stages, failure, commit, release, toolchain
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX deploy_runs_deployment ON deploy_runs (deployment_id, created_at);
CREATE INDEX deploy_runs_active ON deploy_runs (status)
    WHERE status IN ('queued', 'cloning', 'building', 'starting');

-- Credentials of a private repository: never returned by the API, never logged.
CREATE TABLE deployment_credentials (
    deployment_id TEXT PRIMARY KEY REFERENCES deployments (id) ON DELETE CASCADE,
    username      TEXT,
    password      TEXT,
    ssh_key       TEXT,
    updated_at    REAL NOT NULL
) WITHOUT ROWID;

CREATE INDEX deployments_status ON deployments (status);
