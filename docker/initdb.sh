#!/bin/sh
# Run once by the postgres image when it creates its data directory (docker-entrypoint-initdb.d).
# tenantgate refuses a superuser or BYPASSRLS backend role, so the application gets its own
# unprivileged role, database and a sample tenant-scoped table with row-level security as the
# second lock (the proxy sets tenantgate.tenant on every tenant session's backend connection).
set -e

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    -v app_password="$TENANTGATE_BACKEND_PASSWORD" <<'SQL'
CREATE ROLE tenantgate_app LOGIN PASSWORD :'app_password';
CREATE DATABASE app OWNER tenantgate_app;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname app <<'SQL'
SET ROLE tenantgate_app;
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    tenant_id text NOT NULL,
    item text NOT NULL,
    amount numeric(12, 2) NOT NULL
);
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
ALTER TABLE orders FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON orders
    USING (tenant_id = current_setting('tenantgate.tenant', true))
    WITH CHECK (tenant_id = current_setting('tenantgate.tenant', true));
RESET ROLE;
-- sample rows, inserted as the superuser (RLS does not apply to it)
INSERT INTO orders (tenant_id, item, amount) VALUES
    ('acme', 'anvil', 100), ('acme', 'rocket skates', 250), ('globex', 'hammock', 40);
SQL
