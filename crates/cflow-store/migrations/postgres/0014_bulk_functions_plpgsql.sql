-- `cflow_ids` and `cflow_rows` (migrations 0011 and 0013) as PL/pgSQL functions. A SQL
-- function that cannot be inlined (theirs was kept from inlining by a `SET` clause, so that its
-- one-row estimate holds) is parsed and planned again at every call, and its `SET` clause saves
-- and restores a setting: about 24 us a call against 6 us for PL/pgSQL, which keeps its plan
-- for the session and is never inlined (a two-row batch, 20,000 calls in one session; 3 us for
-- the built-in itself). Every batched statement of the writer calls one of them. The planner's
-- estimate stays one row (`ROWS 1`); `pg_catalog` is searched first, so the built-ins are the
-- ones called.
CREATE OR REPLACE FUNCTION cflow_ids(j jsonb) RETURNS SETOF text
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
    AS $$ BEGIN RETURN QUERY SELECT jsonb_array_elements_text(j); END $$;

CREATE OR REPLACE FUNCTION cflow_rows(j jsonb) RETURNS SETOF jsonb
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
    AS $$ BEGIN RETURN QUERY SELECT jsonb_array_elements(j); END $$;
