-- mde-sync schema, SQLite. The table and column names are a contract that users' queries rely on:
-- add columns in new migrations, never rename or drop one here.
--
-- Times are TEXT in one fixed form, 'YYYY-MM-DDTHH:MM:SS.fffffffZ' (seven fractional digits, UTC),
-- so that comparing the text compares the instants. `raw` keeps the API's own text.

CREATE TABLE alerts (
    tenant_id            TEXT    NOT NULL,
    id                   TEXT    NOT NULL,
    incident_id          INTEGER,
    investigation_id     INTEGER,
    assigned_to          TEXT,
    severity             TEXT,
    status               TEXT,
    classification       TEXT,
    determination        TEXT,
    investigation_state  TEXT,
    detection_source     TEXT,
    detector_id          TEXT,
    category             TEXT,
    threat_family_name   TEXT,
    threat_name          TEXT,
    title                TEXT,
    description          TEXT,
    alert_creation_time  TEXT,
    first_event_time     TEXT,
    last_event_time      TEXT,
    last_update_time     TEXT,
    resolved_time        TEXT,
    machine_id           TEXT,
    computer_dns_name    TEXT,
    rbac_group_name      TEXT,
    aad_tenant_id        TEXT,
    mitre_techniques     TEXT,   -- JSON array
    related_user         TEXT,   -- JSON object
    comments             TEXT,   -- JSON array
    raw                  TEXT    NOT NULL,   -- the alert exactly as the API sent it
    first_seen_at        TEXT    NOT NULL,
    synced_at            TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX alerts_by_tenant_update ON alerts (tenant_id, last_update_time);
CREATE INDEX alerts_open_by_severity ON alerts (status, severity);
CREATE INDEX alerts_by_incident ON alerts (tenant_id, incident_id);
CREATE INDEX alerts_by_machine ON alerts (machine_id);

CREATE TABLE alert_evidence (
    tenant_id                     TEXT    NOT NULL,
    alert_id                      TEXT    NOT NULL,
    position                      INTEGER NOT NULL,
    entity_type                   TEXT,
    evidence_creation_time        TEXT,
    sha1                          TEXT,
    sha256                        TEXT,
    file_name                     TEXT,
    file_path                     TEXT,
    process_id                    INTEGER,
    process_command_line          TEXT,
    process_creation_time         TEXT,
    parent_process_id             INTEGER,
    parent_process_creation_time  TEXT,
    parent_process_file_name      TEXT,
    parent_process_file_path      TEXT,
    ip_address                    TEXT,
    url                           TEXT,
    registry_key                  TEXT,
    registry_hive                 TEXT,
    registry_value_type           TEXT,
    registry_value                TEXT,
    account_name                  TEXT,
    domain_name                   TEXT,
    user_sid                      TEXT,
    aad_user_id                   TEXT,
    user_principal_name           TEXT,
    detection_status              TEXT,
    raw                           TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, alert_id, position),
    FOREIGN KEY (tenant_id, alert_id) REFERENCES alerts (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX alert_evidence_by_sha256 ON alert_evidence (sha256);

-- One row per tenant. `watermark`: every alert version whose last_update_time is earlier than it
-- has been stored. It moves only forward, in the same transaction as the alerts it covers.
CREATE TABLE sync_state (
    tenant_id             TEXT    PRIMARY KEY,
    tenant_name           TEXT    NOT NULL,
    watermark             TEXT,
    health                TEXT    NOT NULL DEFAULT 'new',
    last_attempt_at       TEXT,
    last_success_at       TEXT,
    last_error            TEXT,
    last_error_at         TEXT,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    updated_at            TEXT    NOT NULL
);

CREATE TABLE sync_runs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id         TEXT    NOT NULL,
    started_at        TEXT    NOT NULL,
    finished_at       TEXT,
    outcome           TEXT    NOT NULL DEFAULT 'running',  -- running, ok, failed, abandoned
    alerts_received   INTEGER NOT NULL DEFAULT 0,
    alerts_written    INTEGER NOT NULL DEFAULT 0,
    alerts_rejected   INTEGER NOT NULL DEFAULT 0,
    pages             INTEGER NOT NULL DEFAULT 0,
    watermark_before  TEXT,
    watermark_after   TEXT,
    error             TEXT
);

CREATE INDEX sync_runs_by_tenant ON sync_runs (tenant_id, started_at);
