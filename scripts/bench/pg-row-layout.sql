-- What the writer's row writes cost PostgreSQL per task, and what other row layouts would cost,
-- without the rest of the writer (JSON rows, reads, the ledger). Quoted in the README
-- ("How much each layout change would save").
--
-- Run it in a copy of a database that `cflow bench tasks --database …` filled (it needs the
-- schema, a tenant, a swarm and 256 agents), for example:
--   createdb -T bench_db sim_cur && psql sim_cur -f scripts/bench/pg-row-layout.sql
--   psql sim_cur -c 'SET synchronous_commit = off' -c '\timing on' -c 'CALL cflow_sim_rows(80, 1)'
-- and divide the time by 80 × 256 tasks. Variant 1 writes the rows the way cflow does (the
-- attempt inserted at assignment, updated at the end); variant 2 keeps the running attempt in
-- the task's row and inserts the attempt row at its end. Drop `tasks_by_state` and
-- `tasks_ready` (and set a fill factor below 100) in another copy to see HOT updates of tasks.
-- It adds 20,480 tasks per call to the copy; never run it against a database in use.
CREATE OR REPLACE PROCEDURE cflow_sim_rows(n_batches int, variant int) LANGUAGE plpgsql AS $$
DECLARE ids text[]; b int; ag text[]; T text; S text;
BEGIN
 SELECT tenant_id, swarm_id INTO T, S FROM tasks LIMIT 1;
 SELECT array_agg(id) INTO ag FROM (SELECT id FROM agents ORDER BY id LIMIT 256) x;
 FOR b IN 1..n_batches LOOP
   ids := ARRAY(SELECT gen_random_uuid()::text FROM generate_series(1,256));
   INSERT INTO tasks (id, tenant_id, swarm_id, spec, priority, requires, labels, depends_on, timeout_ms, max_attempts, replicas, quorum, state, attempts, epoch, unmet, created_at, updated_at)
     SELECT i, T, S, '{"command":"true"}', 0, '[]', '{}', '[]', 60000, 1, 1, 1, 'queued', 0, 0, 0, 1, 1 FROM unnest(ids) i;
   COMMIT;
   IF variant = 1 THEN
     UPDATE tasks SET state='assigned', epoch=epoch+1, attempts=attempts+1, updated_at=2 WHERE id = ANY(ids) AND state='queued';
     INSERT INTO attempts (task_id, epoch, attempt_no, tenant_id, agent_id, worker_id, state, lease_expires_at, assigned_at)
       SELECT i, 1, 1, T, ag[k], 'worker-1', 'assigned', 100, 2 FROM unnest(ids) WITH ORDINALITY u(i,k);
   ELSE
     -- the running attempt kept in the task's row (agent_id, and two spare columns standing in
     -- for worker and lease)
     UPDATE tasks SET state='assigned', epoch=epoch+1, attempts=attempts+1, updated_at=2, agent_id=ag[k], reason='worker-1', retry_at=100
       FROM unnest(ids) WITH ORDINALITY u(i,k) WHERE tasks.id = u.i AND state='queued';
   END IF;
   COMMIT;
   IF variant = 1 THEN
     UPDATE attempts SET state='succeeded', ended_at=3, exit_code=0, started_at=2, result='{"ok":true}'
       WHERE task_id = ANY(ids) AND epoch = 1 AND state IN ('assigned','running');
     UPDATE tasks SET state='succeeded', updated_at=3 WHERE id = ANY(ids) AND state IN ('assigned','running');
   ELSE
     INSERT INTO attempts (task_id, epoch, attempt_no, tenant_id, agent_id, worker_id, state, lease_expires_at, assigned_at, started_at, ended_at, exit_code, result)
       SELECT i, 1, 1, T, ag[k], 'worker-1', 'succeeded', 100, 2, 2, 3, 0, '{"ok":true}' FROM unnest(ids) WITH ORDINALITY u(i,k);
     UPDATE tasks SET state='succeeded', updated_at=3, agent_id=NULL, reason=NULL, retry_at=NULL WHERE id = ANY(ids) AND state IN ('assigned','running');
   END IF;
   UPDATE agents SET tasks_done = tasks_done + 1 WHERE id = ANY(ag);
   COMMIT;
 END LOOP;
END $$;
