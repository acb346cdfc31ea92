-- Microsoft Graph security incidents beside alerts (src/sync/mod.rs, "Collections"). One current
-- row per (tenant_id, id): a version replaces the stored one only if it is not older
-- (last_update_ticks, exact 100 ns, as for alerts). The enum columns hold the values the alert
-- columns use ('High', 'InProgress', 'TruePositive', ...); incident_id is the id as an integer,
-- the key alerts.incident_id joins on. A merged incident has status 'Redirected' and names the
-- survivor in redirect_incident_id.
CREATE TABLE incidents (
    tenant_id             text        NOT NULL,
    id                    text        NOT NULL,
    incident_id           bigint,
    display_name          text,
    description           text,
    status                text,
    severity              text,
    classification        text,
    determination         text,
    assigned_to           text,
    custom_tags           jsonb,
    system_tags           jsonb,
    comments              jsonb,
    creation_time         timestamptz,
    last_update_time      timestamptz,
    redirect_incident_id  text,
    incident_web_url      text,
    summary               text,
    last_modified_by      text,
    aad_tenant_id         text,
    raw                   jsonb       NOT NULL,
    last_update_ticks     bigint,
    first_seen_at         timestamptz NOT NULL,
    synced_at             timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX incidents_by_tenant_update ON incidents (tenant_id, last_update_time);
CREATE INDEX incidents_by_number ON incidents (tenant_id, incident_id);
CREATE INDEX incidents_by_status ON incidents (status, severity);

-- The sync state of each (tenant, collection) other than alerts, whose state stays in
-- sync_state: the same columns, the same meaning.
CREATE TABLE collection_state (
    tenant_id               text             NOT NULL,
    collection              text             NOT NULL,
    watermark               timestamptz,
    health                  text             NOT NULL DEFAULT 'new',
    last_attempt_at         timestamptz,
    last_success_at         timestamptz,
    last_error              text,
    last_error_at           timestamptz,
    consecutive_failures    integer          NOT NULL DEFAULT 0,
    fresh_as_of             timestamptz,
    cursor_overlap_seconds  double precision,
    updated_at              timestamptz      NOT NULL,
    PRIMARY KEY (tenant_id, collection)
);

-- Which collection a run synced; alerts_received and its siblings count that collection's items.
ALTER TABLE sync_runs ADD COLUMN collection text NOT NULL DEFAULT 'alerts';

-- Each incident with the incident it ended in after its merges (itself when never merged), and
-- how many merges lie between; a survivor not synced (yet) ends the chain.
CREATE VIEW incident_merges AS
WITH RECURSIVE chain (tenant_id, incident_id, surviving_id, merges) AS (
    SELECT tenant_id, id, id, 0 FROM incidents
    UNION ALL
    SELECT c.tenant_id, c.incident_id, i.redirect_incident_id, c.merges + 1
    FROM chain c
    JOIN incidents i ON i.tenant_id = c.tenant_id AND i.id = c.surviving_id
    WHERE i.status = 'Redirected' AND i.redirect_incident_id IS NOT NULL AND c.merges < 16
)
SELECT c.tenant_id, c.incident_id, c.surviving_id, c.merges
FROM chain c
LEFT JOIN incidents s ON s.tenant_id = c.tenant_id AND s.id = c.surviving_id
WHERE s.id IS NULL OR s.status IS DISTINCT FROM 'Redirected' OR s.redirect_incident_id IS NULL OR c.merges = 16;

-- Every incident with its tenant's name, whether it is open (neither resolved nor merged) and
-- how many alerts name it.
CREATE VIEW incidents_overview AS
SELECT i.tenant_id,
       s.tenant_name,
       i.id,
       i.display_name,
       i.status,
       CASE WHEN COALESCE(i.status, '') NOT IN ('Resolved', 'Redirected') THEN 1 ELSE 0 END AS is_open,
       i.severity,
       i.classification,
       i.determination,
       i.assigned_to,
       i.creation_time,
       i.last_update_time,
       i.redirect_incident_id,
       i.incident_web_url,
       (SELECT COUNT(*) FROM alerts a
        WHERE a.tenant_id = i.tenant_id AND a.incident_id = i.incident_id) AS alert_count
FROM incidents i
LEFT JOIN sync_state s ON s.tenant_id = i.tenant_id;

-- Every alert with the incident it belongs to now (merges followed).
CREATE VIEW incident_alerts AS
SELECT a.tenant_id,
       m.surviving_id AS incident_id,
       a.incident_id AS alert_incident_id,
       a.id AS alert_id,
       a.title,
       a.severity,
       a.status,
       a.category,
       a.computer_dns_name,
       a.last_update_time
FROM alerts a
JOIN incident_merges m ON m.tenant_id = a.tenant_id AND m.incident_id = CAST(a.incident_id AS text);
