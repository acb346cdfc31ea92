//! The alert as stored, whichever API it came from: the columns of `alerts` and `alert_evidence`
//! ([`ALERT_COLUMNS`], [`EVIDENCE_COLUMNS`]), one parsed alert ([`AlertRow`]) and the lenient
//! conversion of JSON values into typed column values. A leaf: it imports only [`crate::timestamp`].
//! Each source's parser (`mde::model`, `graph::model`) fills these rows from its own JSON.

use std::collections::HashMap;

use serde_json::Value;

use crate::timestamp::Timestamp;

/// How a column's value is typed in the databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Free text or an open enum.
    Text,
    /// A 64-bit integer (ids, process ids).
    Int,
    /// An instant, stored in the canonical seven-digit form.
    Time,
    /// A JSON array or object, stored as JSON text.
    Json,
}

/// One column value, ready to bind.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Text(Option<String>),
    Int(Option<i64>),
    Time(Option<Timestamp>),
    Json(Option<String>),
}

/// `(column, JSON property, kind)` for every documented alert property except `id` and
/// `evidence`. The column names are a contract users' queries rely on: never rename one.
pub const ALERT_COLUMNS: &[(&str, &str, Kind)] = &[
    ("incident_id", "incidentId", Kind::Int),
    ("investigation_id", "investigationId", Kind::Int),
    ("assigned_to", "assignedTo", Kind::Text),
    ("severity", "severity", Kind::Text),
    ("status", "status", Kind::Text),
    ("classification", "classification", Kind::Text),
    ("determination", "determination", Kind::Text),
    ("investigation_state", "investigationState", Kind::Text),
    ("detection_source", "detectionSource", Kind::Text),
    ("detector_id", "detectorId", Kind::Text),
    ("category", "category", Kind::Text),
    ("threat_family_name", "threatFamilyName", Kind::Text),
    ("threat_name", "threatName", Kind::Text),
    ("title", "title", Kind::Text),
    ("description", "description", Kind::Text),
    ("alert_creation_time", "alertCreationTime", Kind::Time),
    ("first_event_time", "firstEventTime", Kind::Time),
    ("last_event_time", "lastEventTime", Kind::Time),
    ("last_update_time", "lastUpdateTime", Kind::Time),
    ("resolved_time", "resolvedTime", Kind::Time),
    ("machine_id", "machineId", Kind::Text),
    ("computer_dns_name", "computerDnsName", Kind::Text),
    ("rbac_group_name", "rbacGroupName", Kind::Text),
    ("aad_tenant_id", "aadTenantId", Kind::Text),
    ("mitre_techniques", "mitreTechniques", Kind::Json),
    ("related_user", "relatedUser", Kind::Json),
    ("comments", "comments", Kind::Json),
    // Added by migration 0002. An empty JSON property means the MDE API has no such property:
    // the column is filled by the Graph mapping (`graph::model`) or, for `source`, by the parser.
    ("source", "", Kind::Text),
    ("service_source", "", Kind::Text),
    ("graph_detection_source", "", Kind::Text),
    ("provider_alert_id", "", Kind::Text),
    ("alert_web_url", "", Kind::Text),
    ("incident_web_url", "", Kind::Text),
    ("actor_display_name", "", Kind::Text),
    ("recommended_actions", "", Kind::Text),
    ("product_name", "", Kind::Text),
    ("alert_policy_id", "", Kind::Text),
    ("categories", "", Kind::Json),
    ("system_tags", "", Kind::Json),
    ("additional_data", "", Kind::Json),
    ("custom_details", "", Kind::Json),
];

/// `(column, JSON property, kind)` for every documented evidence property.
pub const EVIDENCE_COLUMNS: &[(&str, &str, Kind)] = &[
    ("entity_type", "entityType", Kind::Text),
    ("evidence_creation_time", "evidenceCreationTime", Kind::Time),
    ("sha1", "sha1", Kind::Text),
    ("sha256", "sha256", Kind::Text),
    ("file_name", "fileName", Kind::Text),
    ("file_path", "filePath", Kind::Text),
    ("process_id", "processId", Kind::Int),
    ("process_command_line", "processCommandLine", Kind::Text),
    ("process_creation_time", "processCreationTime", Kind::Time),
    ("parent_process_id", "parentProcessId", Kind::Int),
    (
        "parent_process_creation_time",
        "parentProcessCreationTime",
        Kind::Time,
    ),
    (
        "parent_process_file_name",
        "parentProcessFileName",
        Kind::Text,
    ),
    (
        "parent_process_file_path",
        "parentProcessFilePath",
        Kind::Text,
    ),
    ("ip_address", "ipAddress", Kind::Text),
    ("url", "url", Kind::Text),
    ("registry_key", "registryKey", Kind::Text),
    ("registry_hive", "registryHive", Kind::Text),
    ("registry_value_type", "registryValueType", Kind::Text),
    ("registry_value", "registryValue", Kind::Text),
    ("account_name", "accountName", Kind::Text),
    ("domain_name", "domainName", Kind::Text),
    ("user_sid", "userSid", Kind::Text),
    ("aad_user_id", "aadUserId", Kind::Text),
    ("user_principal_name", "userPrincipalName", Kind::Text),
    ("detection_status", "detectionStatus", Kind::Text),
    // Added by migration 0002, filled from Graph evidence only (see `graph::model`).
    ("odata_type", "", Kind::Text),
    ("verdict", "", Kind::Text),
    ("remediation_status", "", Kind::Text),
    ("remediation_status_details", "", Kind::Text),
    ("roles", "", Kind::Json),
    ("detailed_roles", "", Kind::Json),
    ("tags", "", Kind::Json),
    ("mde_device_id", "", Kind::Text),
    ("azure_ad_device_id", "", Kind::Text),
    ("device_dns_name", "", Kind::Text),
    ("os_platform", "", Kind::Text),
    ("os_build", "", Kind::Int),
    ("device_version", "", Kind::Text),
    ("health_status", "", Kind::Text),
    ("risk_score", "", Kind::Text),
    ("onboarding_status", "", Kind::Text),
    ("defender_av_status", "", Kind::Text),
    ("rbac_group_id", "", Kind::Int),
    ("rbac_group_name", "", Kind::Text),
    ("first_seen_time", "", Kind::Time),
    ("ip_interfaces", "", Kind::Json),
    ("logged_on_users", "", Kind::Json),
    ("vm_metadata", "", Kind::Json),
    ("md5", "", Kind::Text),
    ("file_size", "", Kind::Int),
    ("file_publisher", "", Kind::Text),
    ("signer", "", Kind::Text),
    ("issuer", "", Kind::Text),
    ("parent_process_sha1", "", Kind::Text),
    ("parent_process_sha256", "", Kind::Text),
    ("user_display_name", "", Kind::Text),
    ("registry_value_name", "", Kind::Text),
    ("country_letter_code", "", Kind::Text),
];

/// `(column, JSON property, kind)` of every `incidents` column but `id` and `raw` (migration
/// 0010), filled from a Graph incident by `graph::incident`. The enum columns hold the values
/// the alert columns use (`High`, `InProgress`, `TruePositive`, ...), so one query can join both.
pub const INCIDENT_COLUMNS: &[(&str, &str, Kind)] = &[
    ("display_name", "displayName", Kind::Text),
    ("description", "description", Kind::Text),
    ("status", "status", Kind::Text),
    ("severity", "severity", Kind::Text),
    ("classification", "classification", Kind::Text),
    ("determination", "determination", Kind::Text),
    ("assigned_to", "assignedTo", Kind::Text),
    ("custom_tags", "customTags", Kind::Json),
    ("system_tags", "systemTags", Kind::Json),
    ("comments", "comments", Kind::Json),
    ("creation_time", "createdDateTime", Kind::Time),
    ("last_update_time", "lastUpdateDateTime", Kind::Time),
    ("redirect_incident_id", "redirectIncidentId", Kind::Text),
    ("incident_web_url", "incidentWebUrl", Kind::Text),
    ("summary", "summary", Kind::Text),
    ("last_modified_by", "lastModifiedBy", Kind::Text),
    ("aad_tenant_id", "tenantId", Kind::Text),
];

/// One alert (or one incident: values in [`INCIDENT_COLUMNS`] order, no evidence), parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRow {
    pub id: String,
    pub last_update: Option<Timestamp>,
    pub aad_tenant_id: Option<String>,
    /// Values in [`ALERT_COLUMNS`] order (an incident's in [`INCIDENT_COLUMNS`] order).
    pub values: Vec<Val>,
    pub evidence: Vec<EvidenceRow>,
    /// The alert's JSON exactly as received.
    pub raw: String,
    /// Properties whose value had the wrong shape: their columns are NULL, the value is in
    /// `raw` (one entry per property, "name: why").
    pub coerced: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EvidenceRow {
    /// Values in [`EVIDENCE_COLUMNS`] order.
    pub values: Vec<Val>,
    pub raw: String,
}

/// Why one alert was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("malformed alert {}: {reason}", id.as_deref().unwrap_or("<no id>"))]
pub struct Malformed {
    pub id: Option<String>,
    pub reason: String,
}

pub fn column_index(cols: &[(&str, &str, Kind)], name: &str) -> usize {
    cols.iter()
        .position(|(c, _, _)| *c == name)
        .expect("known column")
}

/// Property name -> index in `spec`, for the columns that have a property.
pub fn property_index(spec: &[(&'static str, &'static str, Kind)]) -> HashMap<&'static str, usize> {
    spec.iter()
        .enumerate()
        .filter(|(_, (_, prop, _))| !prop.is_empty())
        .map(|(i, (_, prop, _))| (*prop, i))
        .collect()
}

/// The NULL of a column kind.
pub fn null(kind: Kind) -> Val {
    match kind {
        Kind::Text => Val::Text(None),
        Kind::Int => Val::Int(None),
        Kind::Time => Val::Time(None),
        Kind::Json => Val::Json(None),
    }
}

/// [`convert`], or the column's NULL with the problem noted in `coerced` as "`what`: why".
pub fn convert_or_null(
    v: Option<&Value>,
    kind: Kind,
    what: &dyn std::fmt::Display,
    coerced: &mut Vec<String>,
) -> Val {
    or_null(convert(v, kind), kind, what, coerced)
}

/// A converted value, or the column's NULL with the problem noted in `coerced` as "`what`: why".
/// A value of the wrong shape becomes NULL rather than refusing the alert: it is stored whole in
/// `raw` all the same, and refusing it would drop a version the watermark may already cover.
pub fn or_null(
    converted: Result<Val, String>,
    kind: Kind,
    what: &dyn std::fmt::Display,
    coerced: &mut Vec<String>,
) -> Val {
    converted.unwrap_or_else(|e| {
        coerced.push(format!("{what}: {e}"));
        null(kind)
    })
}

/// Evidence that is not a JSON object: kept as a row of NULL columns with its JSON text in `raw`,
/// so an alert keeps one evidence row per item whatever their shape.
pub fn opaque_evidence(raw: String, at: &str, coerced: &mut Vec<String>) -> EvidenceRow {
    coerced.push(format!("{at}: not an object"));
    EvidenceRow {
        values: EVIDENCE_COLUMNS.iter().map(|(_, _, k)| null(*k)).collect(),
        raw,
    }
}

pub fn convert(v: Option<&Value>, kind: Kind) -> Result<Val, String> {
    let v = match v {
        None | Some(Value::Null) => return Ok(null(kind)),
        Some(v) => v,
    };
    Ok(match kind {
        Kind::Text => Val::Text(Some(match v {
            Value::String(s) => s.clone(),
            // An unexpected shape is kept, as JSON text, rather than refusing the alert.
            other => other.to_string(),
        })),
        Kind::Int => Val::Int(Some(match v {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| format!("{n} is not a 64-bit integer"))?,
            Value::String(s) => s
                .parse::<i64>()
                .map_err(|_| format!("{s:?} is not an integer"))?,
            other => return Err(format!("{other} is not an integer")),
        })),
        Kind::Time => Val::Time(Some(match v {
            Value::String(s) => Timestamp::parse(s).map_err(|e| e.to_string())?,
            other => return Err(format!("{other} is not a timestamp")),
        })),
        Kind::Json => Val::Json(Some(v.to_string())),
    })
}
