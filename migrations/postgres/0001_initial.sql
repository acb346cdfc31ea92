-- mde-sync schema, Postgres (13 or later). Same tables and columns as the SQLite schema; the
-- names are a contract users' queries rely on: add columns in new migrations, never rename.
--
-- Times are timestamptz (microseconds; mde-sync floors the API's 100 ns values). `raw` is the
-- alert as the API sent it, as jsonb, so the API's full-precision timestamp text stays there.

CREATE TABLE alerts (
    tenant_id            text        NOT NULL,
    id                   text        NOT NULL,
    incident_id          bigint,
    investigation_id     bigint,
    assigned_to          text,
    severity             text,
    status               text,
    classification       text,
    determination        text,
    investigation_state  text,
    detection_source     text,
    detector_id          text,
    category             text,
    threat_family_name   text,
    threat_name          text,
    title                text,
    description          text,
    alert_creation_time  timestamptz,
    first_event_time     timestamptz,
    last_event_time      timestamptz,
    last_update_time     timestamptz,
    resolved_time        timestamptz,
    machine_id           text,
    computer_dns_name    text,
    rbac_group_name      text,
    aad_tenant_id        text,
    mitre_techniques     jsonb,
    related_user         jsonb,
    comments             jsonb,
    raw                  jsonb       NOT NULL,
    -- lastUpdateTime in exact 100 ns ticks since 1970: versions are compared on this, since
    -- timestamptz cannot tell apart two versions within one microsecond
    last_update_ticks    bigint,
    first_seen_at        timestamptz NOT NULL,
    synced_at            timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX alerts_by_tenant_update ON alerts (tenant_id, last_update_time);
CREATE INDEX alerts_open_by_severity ON alerts (severity, tenant_id) WHERE status IS DISTINCT FROM 'Resolved';
CREATE INDEX alerts_by_incident ON alerts (tenant_id, incident_id);
CREATE INDEX alerts_by_machine ON alerts (machine_id);

CREATE TABLE alert_evidence (
    tenant_id                     text    NOT NULL,
    alert_id                      text    NOT NULL,
    position                      integer NOT NULL,
    entity_type                   text,
    evidence_creation_time        timestamptz,
    sha1                          text,
    sha256                        text,
    file_name                     text,
    file_path                     text,
    process_id                    bigint,
    process_command_line          text,
    process_creation_time         timestamptz,
    parent_process_id             bigint,
    parent_process_creation_time  timestamptz,
    parent_process_file_name      text,
    parent_process_file_path      text,
    ip_address                    text,
    url                           text,
    registry_key                  text,
    registry_hive                 text,
    registry_value_type           text,
    registry_value                text,
    account_name                  text,
    domain_name                   text,
    user_sid                      text,
    aad_user_id                   text,
    user_principal_name           text,
    detection_status              text,
    raw                           jsonb   NOT NULL,
    PRIMARY KEY (tenant_id, alert_id, position),
    FOREIGN KEY (tenant_id, alert_id) REFERENCES alerts (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX alert_evidence_by_sha256 ON alert_evidence (sha256);

CREATE TABLE sync_state (
    tenant_id             text        PRIMARY KEY,
    tenant_name           text        NOT NULL,
    watermark             timestamptz,
    health                text        NOT NULL DEFAULT 'new',
    last_attempt_at       timestamptz,
    last_success_at       timestamptz,
    last_error            text,
    last_error_at         timestamptz,
    consecutive_failures  integer     NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL
);

CREATE TABLE sync_runs (
    id                bigserial   PRIMARY KEY,
    tenant_id         text        NOT NULL,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    outcome           text        NOT NULL DEFAULT 'running',
    alerts_received   bigint      NOT NULL DEFAULT 0,
    alerts_written    bigint      NOT NULL DEFAULT 0,
    alerts_rejected   bigint      NOT NULL DEFAULT 0,
    pages             bigint      NOT NULL DEFAULT 0,
    watermark_before  timestamptz,
    watermark_after   timestamptz,
    error             text
);

CREATE INDEX sync_runs_by_tenant ON sync_runs (tenant_id, started_at);
