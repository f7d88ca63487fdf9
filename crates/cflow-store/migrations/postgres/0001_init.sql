-- cflow schema for PostgreSQL. Times are Unix milliseconds (BIGINT), JSON is TEXT, ids are TEXT.
-- Names, namespaces and keys use the "C" collation so that ordering and prefix ranges compare
-- bytes, exactly as SQLite does, whatever the database's default locale.

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT COLLATE "C" NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT COLLATE "C" NOT NULL,
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

-- `search` indexes key, value and tags with the 'simple' configuration (no stemming, no stop
-- words), the closest match to SQLite's unicode61 tokenizer. It indexes the strings and numbers
-- inside the JSON, not the JSON source (where "line\nnext" would read as "line" and "nnext").
-- PostgreSQL cannot turn the escape \u0000 into text, so a value containing it is indexed by
-- its source instead of failing the write.
CREATE TABLE memory (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    namespace  TEXT COLLATE "C" NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    value      TEXT NOT NULL,
    tags       TEXT NOT NULL,
    version    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT,
    search     TSVECTOR GENERATED ALWAYS AS (
        CASE WHEN value LIKE '%\\u0000%' OR tags LIKE '%\\u0000%'
            THEN to_tsvector('simple'::regconfig, key || ' ' || value || ' ' || tags)
            ELSE to_tsvector('simple'::regconfig, key)
                || json_to_tsvector('simple'::regconfig, value::json, '["string", "numeric"]')
                || json_to_tsvector('simple'::regconfig, tags::json, '["string"]')
        END
    ) STORED,
    PRIMARY KEY (tenant_id, namespace, key)
);
CREATE INDEX memory_by_expiry ON memory (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX memory_search ON memory USING GIN (search);

-- The hash-chained audit ledger. `seq` starts at 1 without gaps; no foreign keys, so that the
-- ledger outlives what it talks about.
CREATE TABLE audit (
    seq          BIGINT PRIMARY KEY,
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

-- The database itself refuses to change history, whoever asks (TRUNCATE included).
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit ledger is append-only';
END;
$$;
CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
