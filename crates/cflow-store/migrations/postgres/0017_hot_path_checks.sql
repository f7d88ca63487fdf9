-- The task lifecycle's writes leave their references to the statements that make them, not to
-- foreign keys. On PostgreSQL a foreign key check locks the referenced row (`FOR KEY SHARE`:
-- a tuple lock, written to the WAL, and a multixact once two transactions hold it), so each
-- task cost three of them: its tenant and its swarm at submission, its own row when its attempt
-- was inserted; 85,000 `Heap/LOCK` records in the WAL of 20,000 tasks. What the keys checked is
-- checked where the rows are made, under the writer's transaction:
-- * a submission's tenant is the caller's (tenants are never deleted), and its swarm is one of
--   that tenant's, read in the same transaction (`tasks::submit_many`; stronger than the key,
--   which did not tie the swarm to the tenant), and swarms are never deleted;
-- * an attempt is inserted from the task row its assignment just updated (`cflow_assign`'s
--   `INSERT … SELECT … FROM u`), with the task row of the same statement (direct offers), or
--   after reading the task (`assign_checked`); tasks are never deleted.
-- SQLite keeps its keys (cheap there: no row locks, +5 % at most when off), so the test suites,
-- which run on both backends, still catch a write that breaks a reference.
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_tenant_id_fkey;
ALTER TABLE tasks DROP CONSTRAINT IF EXISTS tasks_swarm_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT IF EXISTS attempts_task_id_fkey;

-- Expired leases are found through `attempts_live_by_worker` (migration 0004), a partial index
-- of the same live attempts, as on SQLite since its migration 0012: the lease check reads every
-- live attempt (the workers' slots bound them) and sorts the expired ones, with sequential scans
-- off for that query (`Store::expired_leases`), and an assignment writes one index entry less.
DROP INDEX IF EXISTS attempts_live_leases;
