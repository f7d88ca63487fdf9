-- The tasks keep one index by tenant: `tasks_by_state` (tenant, state, id), as on PostgreSQL
-- (its migration 0016, where every update of a task's state wrote an entry into
-- `tasks_by_tenant` too). The listing of a tenant's tasks in every state merges one ordered
-- range of `tasks_by_state` per state (`tasks::list_all_states_sql`). SQLite updates only the
-- indexes whose columns an update changes, so here the index cost one entry per submitted task
-- only: under `cflow bench tasks` the change is within the noise (22 alternated pairs, 11 won).
DROP INDEX IF EXISTS tasks_by_tenant;
