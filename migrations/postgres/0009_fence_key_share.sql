-- The fence no longer updates the lease row: an UPDATE held the row until COMMIT, so a slow
-- commit delayed the heartbeat that renews every lease of the replica (about 28 s of delayed
-- renewals handed every tenant over at once). It now takes a FOR KEY SHARE lock, which an
-- UPDATE of lease_until (the heartbeat) does not wait for, while a claimer's FOR UPDATE SKIP
-- LOCKED still skips the row until the commit ends. last_commit_at is set after the commit.
CREATE OR REPLACE FUNCTION mde_sync_fence(p_tenant text, p_owner text, p_epoch bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM tenant_leases
     WHERE tenant_id = p_tenant
       AND owner = p_owner
       AND epoch = p_epoch
       AND lease_until > clock_timestamp()
       FOR KEY SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'lease on tenant % lost (owner %, epoch %)', p_tenant, p_owner, p_epoch
            USING ERRCODE = 'ML001';
    END IF;
END
$$;
