-- Several `mde-sync run` replicas on one database: each tenant is synced by the replica that
-- holds its lease. All times come from the database clock, so the replicas' clocks never matter.

-- One row per running replica process, written by its heartbeat.
CREATE TABLE sync_replicas (
    replica_id   text        PRIMARY KEY,
    hostname     text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

-- One row per tenant. owner NULL (and lease_until '-infinity') means free. epoch is the fencing
-- token: it grows by one on every claim, and every write transaction names the epoch it holds.
CREATE TABLE tenant_leases (
    tenant_id      text        PRIMARY KEY,
    owner          text,
    epoch          bigint      NOT NULL DEFAULT 0,
    lease_until    timestamptz NOT NULL DEFAULT '-infinity',
    acquired_at    timestamptz,
    renewed_at     timestamptz,
    last_commit_at timestamptz
) WITH (fillfactor = 70);

CREATE INDEX tenant_leases_by_owner ON tenant_leases (owner);

-- The fence: the first statement of every transaction that writes a tenant's data. It raises
-- SQLSTATE ML001 unless the caller still holds the tenant's lease at that epoch, and on success
-- keeps the lease row locked until COMMIT, so no replica can claim the tenant mid-commit.
CREATE FUNCTION mde_sync_fence(p_tenant text, p_owner text, p_epoch bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tenant_leases
       SET last_commit_at = clock_timestamp()
     WHERE tenant_id = p_tenant
       AND owner = p_owner
       AND epoch = p_epoch
       AND lease_until > clock_timestamp();
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease on tenant % lost (owner %, epoch %)', p_tenant, p_owner, p_epoch
            USING ERRCODE = 'ML001';
    END IF;
END
$$;

-- Which replica ran each run, under which lease epoch.
ALTER TABLE sync_runs ADD COLUMN replica_id text;
ALTER TABLE sync_runs ADD COLUMN lease_epoch bigint;
