-- Scheduling: a swarm's balancing strategy and agent pools, a task's preferred agent and quorum
-- replicas (and the parent's agreed result), tenant fair-share quotas, and agent messages.

ALTER TABLE swarms ADD COLUMN strategy TEXT NOT NULL DEFAULT 'weighted_round_robin';
-- JSON list of pools, one per agent type.
ALTER TABLE swarms ADD COLUMN pools TEXT NOT NULL DEFAULT '[]';

ALTER TABLE tasks ADD COLUMN agent_id TEXT;
-- A replica points at its parent; the parent never has attempts of its own.
ALTER TABLE tasks ADD COLUMN replica_of TEXT;
ALTER TABLE tasks ADD COLUMN replica_index BIGINT;
-- JSON: a quorum parent's vote (agreed output and groups).
ALTER TABLE tasks ADD COLUMN result TEXT;
CREATE INDEX tasks_by_replica_of ON tasks (replica_of) WHERE replica_of IS NOT NULL;

ALTER TABLE tenants ADD COLUMN weight BIGINT NOT NULL DEFAULT 1;
ALTER TABLE tenants ADD COLUMN max_running BIGINT;

-- Serves `extend_leases`: a worker's live attempts.
CREATE INDEX attempts_live_by_worker ON attempts (worker_id, task_id)
    WHERE state IN ('assigned', 'running');

-- `id` only grows (an identity, assigned under the writer's lock), so inbox and topic reads page
-- with `id > after`.
CREATE TABLE messages (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    swarm_id   TEXT NOT NULL REFERENCES swarms (id),
    from_agent TEXT NOT NULL,
    to_agent   TEXT,
    topic      TEXT,
    body       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_inbox ON messages (tenant_id, to_agent, id) WHERE to_agent IS NOT NULL;
CREATE INDEX messages_topic ON messages (tenant_id, swarm_id, topic, id) WHERE topic IS NOT NULL;
