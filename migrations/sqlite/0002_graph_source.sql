-- mde-sync schema, SQLite: a second alert source, Microsoft Graph security alerts_v2.
-- New columns only; every existing column keeps its meaning. Typed columns use the MDE
-- vocabulary whatever the source (README, "Graph column mapping"); the columns below hold what
-- only Graph has and stay NULL on rows read from the MDE API.

-- Which API the stored version was read from: 'mde' or 'graph'. Rows written before this
-- migration were all read from the MDE API.
ALTER TABLE alerts ADD COLUMN source TEXT;
UPDATE alerts SET source = 'mde';

ALTER TABLE alerts ADD COLUMN service_source TEXT;
ALTER TABLE alerts ADD COLUMN graph_detection_source TEXT;
ALTER TABLE alerts ADD COLUMN provider_alert_id TEXT;
ALTER TABLE alerts ADD COLUMN alert_web_url TEXT;
ALTER TABLE alerts ADD COLUMN incident_web_url TEXT;
ALTER TABLE alerts ADD COLUMN actor_display_name TEXT;
ALTER TABLE alerts ADD COLUMN recommended_actions TEXT;
ALTER TABLE alerts ADD COLUMN product_name TEXT;
ALTER TABLE alerts ADD COLUMN alert_policy_id TEXT;
ALTER TABLE alerts ADD COLUMN categories TEXT;   -- JSON
ALTER TABLE alerts ADD COLUMN system_tags TEXT;   -- JSON
ALTER TABLE alerts ADD COLUMN additional_data TEXT;   -- JSON
ALTER TABLE alerts ADD COLUMN custom_details TEXT;   -- JSON

CREATE INDEX alerts_by_service_source ON alerts (tenant_id, service_source);

-- Graph evidence is polymorphic: `odata_type` is its @odata.type, `entity_type` the MDE-style
-- name derived from it (deviceEvidence -> Device); the common columns are filled from the
-- type's own properties, and `raw` keeps the item as received.
ALTER TABLE alert_evidence ADD COLUMN odata_type TEXT;
ALTER TABLE alert_evidence ADD COLUMN verdict TEXT;
ALTER TABLE alert_evidence ADD COLUMN remediation_status TEXT;
ALTER TABLE alert_evidence ADD COLUMN remediation_status_details TEXT;
ALTER TABLE alert_evidence ADD COLUMN roles TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN detailed_roles TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN tags TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN mde_device_id TEXT;
ALTER TABLE alert_evidence ADD COLUMN azure_ad_device_id TEXT;
ALTER TABLE alert_evidence ADD COLUMN device_dns_name TEXT;
ALTER TABLE alert_evidence ADD COLUMN os_platform TEXT;
ALTER TABLE alert_evidence ADD COLUMN os_build INTEGER;
ALTER TABLE alert_evidence ADD COLUMN device_version TEXT;
ALTER TABLE alert_evidence ADD COLUMN health_status TEXT;
ALTER TABLE alert_evidence ADD COLUMN risk_score TEXT;
ALTER TABLE alert_evidence ADD COLUMN onboarding_status TEXT;
ALTER TABLE alert_evidence ADD COLUMN defender_av_status TEXT;
ALTER TABLE alert_evidence ADD COLUMN rbac_group_id INTEGER;
ALTER TABLE alert_evidence ADD COLUMN rbac_group_name TEXT;
ALTER TABLE alert_evidence ADD COLUMN first_seen_time TEXT;
ALTER TABLE alert_evidence ADD COLUMN ip_interfaces TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN logged_on_users TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN vm_metadata TEXT;   -- JSON
ALTER TABLE alert_evidence ADD COLUMN md5 TEXT;
ALTER TABLE alert_evidence ADD COLUMN file_size INTEGER;
ALTER TABLE alert_evidence ADD COLUMN file_publisher TEXT;
ALTER TABLE alert_evidence ADD COLUMN signer TEXT;
ALTER TABLE alert_evidence ADD COLUMN issuer TEXT;
ALTER TABLE alert_evidence ADD COLUMN parent_process_sha1 TEXT;
ALTER TABLE alert_evidence ADD COLUMN parent_process_sha256 TEXT;
ALTER TABLE alert_evidence ADD COLUMN user_display_name TEXT;
ALTER TABLE alert_evidence ADD COLUMN registry_value_name TEXT;
ALTER TABLE alert_evidence ADD COLUMN country_letter_code TEXT;

CREATE INDEX alert_evidence_by_device ON alert_evidence (mde_device_id);
