-- Views for analysts (docs/tables.md): the common questions as plain SELECTs that read the same
-- on SQLite and Postgres. One definition of an open alert, the same as `mde-sync status` uses:
-- every status but 'Resolved' is open, so Graph's 'Unknown' and a missing (NULL) status count as
-- open. incident_id is unique only within a tenant: join and group on (tenant_id, incident_id).

-- Every alert with its tenant's name, whether it is open, and how long ago it last changed.
CREATE VIEW alerts_overview AS
SELECT a.tenant_id,
       s.tenant_name,
       a.id,
       a.incident_id,
       a.severity,
       a.status,
       CASE WHEN COALESCE(a.status, '') <> 'Resolved' THEN 1 ELSE 0 END AS is_open,
       a.title,
       a.category,
       a.detection_source,
       a.service_source,
       a.classification,
       a.determination,
       a.assigned_to,
       a.machine_id,
       a.computer_dns_name,
       a.alert_creation_time,
       a.last_update_time,
       a.resolved_time,
       CAST(EXTRACT(EPOCH FROM (now() - a.last_update_time)) / 3600.0 AS double precision) AS hours_since_update,
       a.source,
       a.alert_web_url
FROM alerts a
LEFT JOIN sync_state s ON s.tenant_id = a.tenant_id;

-- The open alerts (see the definition above), with their tenant's name.
CREATE VIEW open_alerts AS
SELECT * FROM alerts_overview WHERE is_open = 1;

-- How many alerts are open per tenant and severity.
CREATE VIEW open_alerts_by_tenant AS
SELECT tenant_id, tenant_name, severity, COUNT(*) AS open_alerts
FROM open_alerts
GROUP BY tenant_id, tenant_name, severity;

-- Each evidence item with its alert and tenant.
CREATE VIEW alert_evidence_overview AS
SELECT e.tenant_id,
       s.tenant_name,
       e.alert_id,
       a.incident_id,
       a.title,
       a.severity,
       a.status,
       CASE WHEN COALESCE(a.status, '') <> 'Resolved' THEN 1 ELSE 0 END AS is_open,
       e.position,
       e.entity_type,
       e.file_name,
       e.file_path,
       e.sha1,
       e.sha256,
       e.process_command_line,
       e.account_name,
       e.domain_name,
       e.user_principal_name,
       e.ip_address,
       e.url,
       e.registry_key,
       e.device_dns_name,
       e.verdict,
       e.detection_status
FROM alert_evidence e
JOIN alerts a ON a.tenant_id = e.tenant_id AND a.id = e.alert_id
LEFT JOIN sync_state s ON s.tenant_id = e.tenant_id;

-- Tenants whose last run failed: every health but ok, new, skipped and stopped.
CREATE VIEW tenants_needing_attention AS
SELECT tenant_id, tenant_name, health, consecutive_failures, last_success_at, last_error_at,
       last_error
FROM sync_state
WHERE health NOT IN ('ok', 'new', 'skipped', 'stopped');
