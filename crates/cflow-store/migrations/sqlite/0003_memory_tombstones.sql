-- The last version of every memory entry that was deleted (or purged), so that a recreated entry
-- goes on counting from there: a version of a (tenant, namespace, key) never repeats, and an
-- `If-Match` taken before a delete can never match an entry created after it. Kept by the
-- trigger below, in the transaction of the delete, whichever statement deletes.
CREATE TABLE memory_tombstones (
    tenant_id    TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    key          TEXT NOT NULL,
    last_version BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, namespace, key)
);
CREATE TRIGGER memory_tombstone AFTER DELETE ON memory BEGIN
    INSERT INTO memory_tombstones (tenant_id, namespace, key, last_version)
        VALUES (old.tenant_id, old.namespace, old.key, old.version)
        ON CONFLICT (tenant_id, namespace, key) DO UPDATE SET
            last_version = max(memory_tombstones.last_version, excluded.last_version);
END;
