-- cflow schema for SQLite. Times are Unix milliseconds (BIGINT), JSON is TEXT, ids are TEXT.
-- Only column types that sqlx's Any driver maps (BIGINT, INTEGER, TEXT) are used.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- A user or service account; API keys and role bindings hang off it.
CREATE TABLE principals (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX principals_by_tenant ON principals (tenant_id, name);

-- A role at tenant scope (project_id NULL) or project scope.
CREATE TABLE role_bindings (
    principal_id TEXT NOT NULL REFERENCES principals (id),
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    project_id   TEXT REFERENCES projects (id),
    role         TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX role_bindings_unique
    ON role_bindings (principal_id, tenant_id, COALESCE(project_id, ''), role);
CREATE INDEX role_bindings_by_tenant ON role_bindings (tenant_id);

-- `role` and `project` (the project's name) are copied from the key's binding so that
-- authentication is one primary-key lookup.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    principal_id TEXT NOT NULL REFERENCES principals (id),
    name         TEXT NOT NULL,
    secret_hash  TEXT NOT NULL,
    role         TEXT NOT NULL,
    project      TEXT,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    last_used_at BIGINT
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id, created_at, id);

-- `id` is an INTEGER PRIMARY KEY (an alias of the rowid) rather than the natural key because the
-- full-text index refers to rows by rowid, and only an aliased rowid is stable across VACUUM.
-- The natural key is the unique index below.
CREATE TABLE memory (
    id         INTEGER PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    tags       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT
);
-- Serves get, the upsert's conflict target, and list (namespace + key prefix range).
CREATE UNIQUE INDEX memory_by_key ON memory (tenant_id, namespace, key);
CREATE INDEX memory_by_expiry ON memory (expires_at) WHERE expires_at IS NOT NULL;

-- The full-text index over key, value and tags, kept in sync by the triggers below. It indexes
-- the text inside the JSON (its strings and numbers, unescaped), not the JSON source: in the
-- source "line\nnext" would read as the words "line" and "nnext". Being contentless, it stores
-- only the index; a search joins back to `memory` by rowid (`id`).
CREATE VIRTUAL TABLE memory_fts USING fts5 (
    key, value, tags,
    content = '',
    tokenize = 'unicode61'
);
CREATE TRIGGER memory_fts_insert AFTER INSERT ON memory BEGIN
    INSERT INTO memory_fts (rowid, key, value, tags) VALUES (
        new.id,
        new.key,
        (SELECT group_concat(value, ' ') FROM json_tree(new.value) WHERE type IN ('text', 'integer', 'real')),
        (SELECT group_concat(value, ' ') FROM json_each(new.tags))
    );
END;
-- A contentless index forgets a row only when given exactly what was indexed for it.
CREATE TRIGGER memory_fts_delete AFTER DELETE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, key, value, tags) VALUES (
        'delete',
        old.id,
        old.key,
        (SELECT group_concat(value, ' ') FROM json_tree(old.value) WHERE type IN ('text', 'integer', 'real')),
        (SELECT group_concat(value, ' ') FROM json_each(old.tags))
    );
END;
CREATE TRIGGER memory_fts_update AFTER UPDATE ON memory BEGIN
    INSERT INTO memory_fts (memory_fts, rowid, key, value, tags) VALUES (
        'delete',
        old.id,
        old.key,
        (SELECT group_concat(value, ' ') FROM json_tree(old.value) WHERE type IN ('text', 'integer', 'real')),
        (SELECT group_concat(value, ' ') FROM json_each(old.tags))
    );
    INSERT INTO memory_fts (rowid, key, value, tags) VALUES (
        new.id,
        new.key,
        (SELECT group_concat(value, ' ') FROM json_tree(new.value) WHERE type IN ('text', 'integer', 'real')),
        (SELECT group_concat(value, ' ') FROM json_each(new.tags))
    );
END;

-- The hash-chained audit ledger. `seq` starts at 1 without gaps; no foreign keys, so that the
-- ledger outlives what it talks about.
CREATE TABLE audit (
    seq          INTEGER PRIMARY KEY,
    at           BIGINT NOT NULL,
    tenant_id    TEXT,
    principal_id TEXT,
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    request_id   TEXT,
    source       TEXT,
    detail       TEXT NOT NULL,
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);
CREATE INDEX audit_by_tenant ON audit (tenant_id, seq);
CREATE INDEX audit_by_time ON audit (at);

-- The database itself refuses to change history, whoever asks.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit BEGIN
    SELECT RAISE(ABORT, 'audit ledger is append-only');
END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit BEGIN
    SELECT RAISE(ABORT, 'audit ledger is append-only');
END;
