-- `cflow_expect` (migration 0015) said that a mismatch meant the database was changed outside
-- cflow's writer. Since attempt reports have writers of their own (two, besides the main and the
-- submission writers), a report sent twice at once can reach two of them: the second one's
-- guarded update waits for the first to commit and then matches nothing, its batch is re-run op
-- by op and that report is answered as stale. The message now names both causes.
CREATE OR REPLACE FUNCTION cflow_expect(what text, got bigint, want bigint) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF got IS DISTINCT FROM want THEN
        RAISE EXCEPTION 'cflow store: a batched write matched % % of %: another writer changed those rows first (a report sent twice at once; the batch is re-run op by op), or something changed the database outside cflow', got, what, want;
    END IF;
    RETURN got;
END $$;
