-- Sandboxing: what each attempt's sandbox saw, the artifacts attempts leave behind, and
-- per-tenant and per-agent sandbox policy overrides.

-- JSON: how the attempt ended, the isolation it ran with and the sandbox's report.
ALTER TABLE attempts ADD COLUMN detail TEXT;

-- JSON sandbox policy overrides (mode, network, allow_degraded, limits); NULL for the defaults.
ALTER TABLE tenants ADD COLUMN sandbox TEXT;
ALTER TABLE agents ADD COLUMN sandbox TEXT;

-- Artifact contents, stored once per distinct content whatever the number of artifacts.
CREATE TABLE artifact_blobs (
    sha256  TEXT PRIMARY KEY,
    size    BIGINT NOT NULL,
    content BLOB NOT NULL
);

-- One row per artifact an attempt stored; a later upload of the same name in the same attempt
-- replaces it.
CREATE TABLE artifacts (
    task_id    TEXT NOT NULL REFERENCES tasks (id),
    epoch      BIGINT NOT NULL,
    tenant_id  TEXT NOT NULL,
    name       TEXT NOT NULL,
    kind       TEXT NOT NULL,
    sha256     TEXT NOT NULL REFERENCES artifact_blobs (sha256),
    size       BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (task_id, epoch, name)
);
CREATE INDEX artifacts_by_sha256 ON artifacts (sha256);
