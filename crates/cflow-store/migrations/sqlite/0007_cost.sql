-- Cost accounting: one row per model call with its tokens and price, and spend budgets per
-- tenant or project and period. Amounts are integer micro-dollars; times are Unix ms.

-- High volume and never changed: no audit entry per row. The ids of the project (its name, as
-- swarms and keys name it), swarm, agent and task are what the caller reported, kept without
-- foreign keys so that a row outlives nothing it points at and costs one insert.
CREATE TABLE model_calls (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          TEXT NOT NULL REFERENCES tenants (id),
    project_id         TEXT,
    swarm_id           TEXT,
    agent_id           TEXT,
    task_id            TEXT,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    input_tokens       BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    cache_read_tokens  BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    cost_micros        BIGINT NOT NULL,
    -- 1 when the model had a price, 0 when cost_micros is 0 only because it had none.
    priced             BIGINT NOT NULL,
    at                 BIGINT NOT NULL
);
-- Rollups and budget spend: a tenant's calls in a time window, or a project's.
CREATE INDEX model_calls_by_tenant_at ON model_calls (tenant_id, at);
CREATE INDEX model_calls_by_project_at ON model_calls (tenant_id, project_id, at)
    WHERE project_id IS NOT NULL;
-- A task's cost on its record.
CREATE INDEX model_calls_by_task ON model_calls (tenant_id, task_id) WHERE task_id IS NOT NULL;

-- One budget per tenant (project_id NULL) or project, and period. NULLs are distinct in a
-- UNIQUE constraint, hence the index on COALESCE.
CREATE TABLE budgets (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    project_id   TEXT,
    period       TEXT NOT NULL,
    limit_micros BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE UNIQUE INDEX budgets_by_scope ON budgets (tenant_id, COALESCE(project_id, ''), period);
