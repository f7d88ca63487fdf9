-- Tenants' secrets, sealed with AES-256-GCM under the server's master key (the tenant id and
-- the name are the associated data). The database never sees a value in the clear.
CREATE TABLE secrets (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    nonce      BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);
