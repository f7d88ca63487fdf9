-- The last version of every memory entry that was deleted (or purged), so that a recreated entry
-- goes on counting from there: a version of a (tenant, namespace, key) never repeats, and an
-- `If-Match` taken before a delete can never match an entry created after it. Kept by the
-- trigger below, in the transaction of the delete, whichever statement deletes.
CREATE TABLE memory_tombstones (
    tenant_id    TEXT NOT NULL,
    namespace    TEXT COLLATE "C" NOT NULL,
    key          TEXT COLLATE "C" NOT NULL,
    last_version BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, namespace, key)
);
CREATE FUNCTION memory_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO memory_tombstones (tenant_id, namespace, key, last_version)
        VALUES (OLD.tenant_id, OLD.namespace, OLD.key, OLD.version)
        ON CONFLICT (tenant_id, namespace, key) DO UPDATE SET
            last_version = GREATEST(memory_tombstones.last_version, excluded.last_version);
    RETURN NULL;
END;
$$;
CREATE TRIGGER memory_tombstone AFTER DELETE ON memory
    FOR EACH ROW EXECUTE FUNCTION memory_tombstone();
