-- mde-sync schema, Postgres: a second alert source, Microsoft Graph security alerts_v2.
-- New columns only; every existing column keeps its meaning. Typed columns use the MDE
-- vocabulary whatever the source (README, "Graph column mapping"); the columns below hold what
-- only Graph has and stay NULL on rows read from the MDE API.

-- Which API the stored version was read from: 'mde' or 'graph'. Rows written before this
-- migration were all read from the MDE API.
ALTER TABLE alerts ADD COLUMN source text;
UPDATE alerts SET source = 'mde';

ALTER TABLE alerts ADD COLUMN service_source text;
ALTER TABLE alerts ADD COLUMN graph_detection_source text;
ALTER TABLE alerts ADD COLUMN provider_alert_id text;
ALTER TABLE alerts ADD COLUMN alert_web_url text;
ALTER TABLE alerts ADD COLUMN incident_web_url text;
ALTER TABLE alerts ADD COLUMN actor_display_name text;
ALTER TABLE alerts ADD COLUMN recommended_actions text;
ALTER TABLE alerts ADD COLUMN product_name text;
ALTER TABLE alerts ADD COLUMN alert_policy_id text;
ALTER TABLE alerts ADD COLUMN categories jsonb;
ALTER TABLE alerts ADD COLUMN system_tags jsonb;
ALTER TABLE alerts ADD COLUMN additional_data jsonb;
ALTER TABLE alerts ADD COLUMN custom_details jsonb;

CREATE INDEX alerts_by_service_source ON alerts (tenant_id, service_source);

-- Graph evidence is polymorphic: `odata_type` is its @odata.type, `entity_type` the MDE-style
-- name derived from it (deviceEvidence -> Device); the common columns are filled from the
-- type's own properties, and `raw` keeps the item as received.
ALTER TABLE alert_evidence ADD COLUMN odata_type text;
ALTER TABLE alert_evidence ADD COLUMN verdict text;
ALTER TABLE alert_evidence ADD COLUMN remediation_status text;
ALTER TABLE alert_evidence ADD COLUMN remediation_status_details text;
ALTER TABLE alert_evidence ADD COLUMN roles jsonb;
ALTER TABLE alert_evidence ADD COLUMN detailed_roles jsonb;
ALTER TABLE alert_evidence ADD COLUMN tags jsonb;
ALTER TABLE alert_evidence ADD COLUMN mde_device_id text;
ALTER TABLE alert_evidence ADD COLUMN azure_ad_device_id text;
ALTER TABLE alert_evidence ADD COLUMN device_dns_name text;
ALTER TABLE alert_evidence ADD COLUMN os_platform text;
ALTER TABLE alert_evidence ADD COLUMN os_build bigint;
ALTER TABLE alert_evidence ADD COLUMN device_version text;
ALTER TABLE alert_evidence ADD COLUMN health_status text;
ALTER TABLE alert_evidence ADD COLUMN risk_score text;
ALTER TABLE alert_evidence ADD COLUMN onboarding_status text;
ALTER TABLE alert_evidence ADD COLUMN defender_av_status text;
ALTER TABLE alert_evidence ADD COLUMN rbac_group_id bigint;
ALTER TABLE alert_evidence ADD COLUMN rbac_group_name text;
ALTER TABLE alert_evidence ADD COLUMN first_seen_time timestamptz;
ALTER TABLE alert_evidence ADD COLUMN ip_interfaces jsonb;
ALTER TABLE alert_evidence ADD COLUMN logged_on_users jsonb;
ALTER TABLE alert_evidence ADD COLUMN vm_metadata jsonb;
ALTER TABLE alert_evidence ADD COLUMN md5 text;
ALTER TABLE alert_evidence ADD COLUMN file_size bigint;
ALTER TABLE alert_evidence ADD COLUMN file_publisher text;
ALTER TABLE alert_evidence ADD COLUMN signer text;
ALTER TABLE alert_evidence ADD COLUMN issuer text;
ALTER TABLE alert_evidence ADD COLUMN parent_process_sha1 text;
ALTER TABLE alert_evidence ADD COLUMN parent_process_sha256 text;
ALTER TABLE alert_evidence ADD COLUMN user_display_name text;
ALTER TABLE alert_evidence ADD COLUMN registry_value_name text;
ALTER TABLE alert_evidence ADD COLUMN country_letter_code text;

CREATE INDEX alert_evidence_by_device ON alert_evidence (mde_device_id);
