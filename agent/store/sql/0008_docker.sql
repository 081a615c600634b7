-- Docker: the releases of image deployments, and the image each Docker service runs.

-- One row per image a deployment ran (a create, a PUT with a new image, a rollback), newest
-- last. The agent tags each release's image `dployr/<name>:<release id>` so that the image
-- stays on the host (even when the user's tag moves) until the release is pruned.
CREATE TABLE image_releases (
    id            TEXT PRIMARY KEY,              -- rel_..., time-sortable
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    image         TEXT NOT NULL,                 -- the reference asked for, e.g. "web:1.2"
    image_id      TEXT NOT NULL,                 -- what it resolved to, "sha256:..."
    rollback_of   TEXT,                          -- the release a rollback copied
    created_at    REAL NOT NULL
);
CREATE INDEX image_releases_deployment ON image_releases (deployment_id, id);

-- The image id the service runs (its current release); NULL: the deployment's `image` as is.
ALTER TABLE services ADD COLUMN image_id TEXT;
