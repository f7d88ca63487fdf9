-- SQLite: expired leases are found through `attempts_live_by_worker` (migration 0004), a partial
-- index over the same live attempts, whose number the workers' slots bound: the lease check
-- reads them all and sorts the expired ones, and an assignment writes one index entry less
-- (+4.7 % under `cflow bench tasks`, 10 alternated pairs, 9 won). PostgreSQL keeps its
-- `attempts_live_leases`: there the lease check's plan without it scanned the whole table.
DROP INDEX IF EXISTS attempts_live_leases;
