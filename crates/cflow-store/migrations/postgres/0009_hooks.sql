-- Lifecycle hooks (SPEC C12) and their durable outbox. Times are Unix ms; lists and objects are
-- JSON TEXT.

-- A tenant's hook: which events (`events`, a JSON array of exact names, `prefix.*` or `*`, and
-- `pre-task`), where (`scope` tenant | project | swarm, with the project's name or the swarm's
-- id in `scope_id`), and what runs (`kind` command | webhook, with its settings in `config`; a
-- webhook names its signing secret, never holds it).
CREATE TABLE hooks (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    scope      TEXT NOT NULL,
    scope_id   TEXT,
    events     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    config     TEXT NOT NULL,
    enabled    BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT,
    UNIQUE (tenant_id, name)
);

-- The outbox: one row per (hook, event), so enqueuing the same event twice is a no-op. A row is
-- `pending` until it is `delivered` or, after its hook's most attempts, `dead` (kept, listed and
-- re-queued on request). `claimed_until` is a sender's lease: while it lies in the future no
-- other sender (on this node or another on the same database) takes the row.
CREATE TABLE hook_deliveries (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL REFERENCES tenants (id),
    hook_id         TEXT NOT NULL REFERENCES hooks (id),
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    claimed_until   BIGINT,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (hook_id, event_id)
);
-- The sender's scan: due pending rows.
CREATE INDEX hook_deliveries_due ON hook_deliveries (next_attempt_at) WHERE state = 'pending';
-- A hook's deliveries by state, in id (time) order.
CREATE INDEX hook_deliveries_by_hook ON hook_deliveries (tenant_id, hook_id, state, id);
