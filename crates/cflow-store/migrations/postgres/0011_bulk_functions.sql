-- The strings of a JSON array bound as one parameter (see `bulk.rs`), as a set-returning
-- function that tells the planner to expect one row. `jsonb_array_elements_text` itself is
-- estimated at 100 rows whatever it holds, so `id IN (<the ids of a batch>)` for a batch of one
-- or a few ids was planned as a hash join over a sequential scan of the whole table: the
-- writer's batched read of tasks took 4 ms at 5,500 tasks and grew with the table. With an
-- estimate of one row the planner looks each id up by its index. The `SET` clause keeps the
-- function from being inlined, which would bring the 100-row estimate back.
CREATE FUNCTION cflow_ids(jsonb) RETURNS SETOF text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
    SET search_path = pg_catalog
    AS 'SELECT jsonb_array_elements_text($1)';
