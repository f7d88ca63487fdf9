-- Orchestration: swarms, agents, tasks, their dependency edges and every attempt.
-- Times are Unix milliseconds, lists and maps are JSON TEXT, states are their snake_case names.

CREATE TABLE swarms (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT COLLATE "C" NOT NULL,
    topology   TEXT NOT NULL,
    project    TEXT,
    max_agents BIGINT NOT NULL,
    state      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    swarm_id     TEXT NOT NULL REFERENCES swarms (id),
    agent_type   TEXT NOT NULL,
    driver       TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    labels       TEXT NOT NULL,
    state        TEXT NOT NULL,
    tasks_done   BIGINT NOT NULL,
    failures     BIGINT NOT NULL,
    busy_ms      BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX agents_by_swarm ON agents (tenant_id, swarm_id, id);

-- `epoch` fences every report about an attempt: it grows by one per assignment, and a write
-- that carries an older one matches no row. `unmet` counts dependencies that have not yet
-- succeeded; `retry_at` is when a task waiting in `pending` for a retry may be queued again.
CREATE TABLE tasks (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    swarm_id        TEXT REFERENCES swarms (id),
    spec            TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    requires        TEXT NOT NULL,
    labels          TEXT NOT NULL,
    depends_on      TEXT NOT NULL,
    timeout_ms      BIGINT NOT NULL,
    max_attempts    BIGINT NOT NULL,
    replicas        BIGINT NOT NULL,
    quorum          BIGINT NOT NULL,
    idempotency_key TEXT,
    state           TEXT NOT NULL,
    reason          TEXT,
    attempts        BIGINT NOT NULL,
    epoch           BIGINT NOT NULL,
    unmet           BIGINT NOT NULL,
    retry_at        BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE UNIQUE INDEX tasks_by_idempotency_key ON tasks (tenant_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tasks_by_tenant ON tasks (tenant_id, id);
CREATE INDEX tasks_by_state ON tasks (tenant_id, state, id);
-- Serves `ready_tasks`: the queue, highest priority first, oldest first within a priority.
CREATE INDEX tasks_ready ON tasks (priority DESC, created_at, id) WHERE state = 'queued';

-- One row per unfinished dependency at submission: `task_id` waits on `dep_id`.
CREATE TABLE task_deps (
    task_id TEXT NOT NULL REFERENCES tasks (id),
    dep_id  TEXT NOT NULL REFERENCES tasks (id),
    PRIMARY KEY (task_id, dep_id)
);
CREATE INDEX task_deps_by_dep ON task_deps (dep_id);

CREATE TABLE attempts (
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    epoch            BIGINT NOT NULL,
    attempt_no       BIGINT NOT NULL,
    tenant_id        TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    worker_id        TEXT NOT NULL,
    state            TEXT NOT NULL,
    lease_expires_at BIGINT NOT NULL,
    assigned_at      BIGINT NOT NULL,
    started_at       BIGINT,
    ended_at         BIGINT,
    exit_code        BIGINT,
    stdout_tail      TEXT,
    stderr_tail      TEXT,
    result           TEXT,
    PRIMARY KEY (task_id, epoch)
);
CREATE INDEX attempts_live_leases ON attempts (lease_expires_at)
    WHERE state IN ('assigned', 'running');
