-- The rows of a JSON array of arrays bound as one parameter (see `bulk.rs`), estimated at one
-- row like `cflow_ids`. `jsonb_array_elements` is estimated at 100 rows whatever it holds, so the
-- writer's batched updates (`UPDATE tasks … FROM <rows> WHERE tasks.id = v.id`) were planned as a
-- hash join over a sequential scan of the table: 1-3 ms for a completion of a few tasks at a few
-- thousand tasks, growing with the table until the estimate of 100 index probes became cheaper.
-- With one row the planner probes the primary key per row. (Without fresh statistics a table
-- estimated empty would get a nested loop over a sequential scan instead; `db::analyzer` keeps
-- the statistics of fast-growing tables fresh.) The `SET` clause keeps the function from being
-- inlined, which would bring the 100-row estimate back.
CREATE FUNCTION cflow_rows(jsonb) RETURNS SETOF jsonb
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
    SET search_path = pg_catalog
    AS 'SELECT jsonb_array_elements($1)';
