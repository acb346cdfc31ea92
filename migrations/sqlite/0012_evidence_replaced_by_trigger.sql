-- A newer version of an alert replaces its evidence. The upsert that replaces an alert's row
-- (src/store/sqlite.rs) leaves deleting the old evidence to this trigger, which saves a statement
-- per batch: each statement is a round trip to SQLite's thread, and at thousands of tenants a
-- minute those round trips are most of the sync's CPU (docs/performance.md). The evidence of an
-- alert whose stored version is kept (the same or newer) is kept with it.
CREATE TRIGGER alert_evidence_replaced AFTER UPDATE OF raw ON alerts
BEGIN
    DELETE FROM alert_evidence WHERE tenant_id = OLD.tenant_id AND alert_id = OLD.id;
END;
