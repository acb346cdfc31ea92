//! The MDE alert as stored: the columns of `alerts` and `alert_evidence`, parsed leniently from the
//! JSON exactly as received.
//!
//! Every property is optional (older payloads lack newer fields), enums are open strings (unknown
//! values are stored as they come), and unknown properties survive in `raw`. Only an alert we
//! cannot key or order — no string `id`, or a timestamp or number that does not parse — is
//! malformed; it is refused alone, never the page it came in.

use serde_json::{Map, Value, value::RawValue};

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

/// One alert, parsed.
#[derive(Debug, Clone)]
pub struct AlertRow {
    pub id: String,
    pub last_update: Option<Timestamp>,
    pub aad_tenant_id: Option<String>,
    /// Values in [`ALERT_COLUMNS`] order.
    pub values: Vec<Val>,
    pub evidence: Vec<EvidenceRow>,
    /// The alert's JSON exactly as received.
    pub raw: String,
}

#[derive(Debug, Clone)]
pub struct EvidenceRow {
    /// Values in [`EVIDENCE_COLUMNS`] order.
    pub values: Vec<Val>,
    pub raw: String,
}

/// Why one alert was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[error("malformed alert {}: {reason}", id.as_deref().unwrap_or("<no id>"))]
pub struct Malformed {
    pub id: Option<String>,
    pub reason: String,
}

/// Parses one MDE alert from its exact JSON text.
pub fn parse_alert(raw: &RawValue) -> Result<AlertRow, Malformed> {
    let text = raw.get();
    let value: Value = serde_json::from_str(text).map_err(|e| Malformed {
        id: None,
        reason: format!("not JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(Malformed {
            id: None,
            reason: "not a JSON object".into(),
        });
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => {
            return Err(Malformed {
                id: None,
                reason: "no string \"id\"".into(),
            });
        }
    };
    let bad = |reason: String| Malformed {
        id: Some(id.clone()),
        reason,
    };
    let mut values = columns(&obj, ALERT_COLUMNS).map_err(bad)?;
    values[column_index(ALERT_COLUMNS, "source")] = Val::Text(Some("mde".into()));
    let last_update = match &values[column_index(ALERT_COLUMNS, "last_update_time")] {
        Val::Time(t) => *t,
        _ => None,
    };
    let aad_tenant_id = match &values[column_index(ALERT_COLUMNS, "aad_tenant_id")] {
        Val::Text(t) => t.clone(),
        _ => None,
    };
    let evidence = match obj.get("evidence") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let Value::Object(e) = item else {
                    return Err(bad(format!("evidence[{i}] is not an object")));
                };
                let values =
                    columns(e, EVIDENCE_COLUMNS).map_err(|r| bad(format!("evidence[{i}]: {r}")))?;
                out.push(EvidenceRow {
                    values,
                    raw: item.to_string(),
                });
            }
            out
        }
        Some(_) => return Err(bad("\"evidence\" is not an array".into())),
    };
    Ok(AlertRow {
        id,
        last_update,
        aad_tenant_id,
        values,
        evidence,
        raw: text.to_owned(),
    })
}

pub fn column_index(cols: &[(&str, &str, Kind)], name: &str) -> usize {
    cols.iter()
        .position(|(c, _, _)| *c == name)
        .expect("known column")
}

pub(crate) fn columns(
    obj: &Map<String, Value>,
    spec: &[(&str, &str, Kind)],
) -> Result<Vec<Val>, String> {
    spec.iter()
        .map(|(_, prop, kind)| {
            convert(obj.get(*prop).filter(|_| !prop.is_empty()), *kind)
                .map_err(|e| format!("{prop}: {e}"))
        })
        .collect()
}

pub(crate) fn convert(v: Option<&Value>, kind: Kind) -> Result<Val, String> {
    let v = match v {
        None | Some(Value::Null) => {
            return Ok(match kind {
                Kind::Text => Val::Text(None),
                Kind::Int => Val::Int(None),
                Kind::Time => Val::Time(None),
                Kind::Json => Val::Json(None),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    const DOC_ALERT: &str = r#"{"id":"da637472900382838869_1364969609","incidentId":1126093,"investigationId":null,"assignedTo":null,"severity":"Low","status":"New","classification":null,"determination":null,"investigationState":"Queued","detectionSource":"WindowsDefenderAtp","detectorId":"17e10bbc-3a68-474a-8aad-faef14d43952","category":"Execution","threatFamilyName":null,"title":"Low-reputation arbitrary code executed by signed executable","description":"Binaries signed by Microsoft can be used to run low-reputation arbitrary code.","alertCreationTime":"2021-01-26T20:33:57.7220239Z","firstEventTime":"2021-01-26T20:31:32.9562661Z","lastEventTime":"2021-01-26T20:31:33.0577322Z","lastUpdateTime":"2021-01-26T20:33:59.2Z","resolvedTime":null,"machineId":"111e6dd8c833c8a052ea231ec1b19adaf497b625","computerDnsName":"temp123.middleeast.corp.microsoft.com","rbacGroupName":"A","aadTenantId":"a839b112-1253-6432-9bf6-94542403f21c","threatName":null,"mitreTechniques":["T1064","T1085","T1220"],"relatedUser":{"userName":"temp123","domainName":"DOMAIN"},"comments":[{"comment":"test comment for docs","createdBy":"secop123@contoso.com","createdTime":"2021-01-26T01:00:37.8404534Z"}],"evidence":[{"entityType":"User","evidenceCreationTime":"2021-01-26T20:33:58.42Z","sha1":null,"processId":null,"accountName":"name","domainName":"DOMAIN"}],"someFutureField":{"x":1}}"#;

    #[test]
    fn the_documented_example_parses_into_columns() {
        let a = parse_alert(&raw(DOC_ALERT)).unwrap();
        assert_eq!(a.id, "da637472900382838869_1364969609");
        assert_eq!(a.raw, DOC_ALERT, "raw is the exact text received");
        assert_eq!(
            a.last_update,
            Some(Timestamp::parse("2021-01-26T20:33:59.2Z").unwrap())
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "incident_id")],
            Val::Int(Some(1126093))
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "severity")],
            Val::Text(Some("Low".into()))
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "mitre_techniques")],
            Val::Json(Some(r#"["T1064","T1085","T1220"]"#.into()))
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "resolved_time")],
            Val::Time(None)
        );
        assert_eq!(a.evidence.len(), 1);
        assert_eq!(
            a.evidence[0].values[column_index(EVIDENCE_COLUMNS, "entity_type")],
            Val::Text(Some("User".into()))
        );
        // fields absent from this evidence item are NULL, not errors
        assert_eq!(
            a.evidence[0].values[column_index(EVIDENCE_COLUMNS, "registry_key")],
            Val::Text(None)
        );
    }

    #[test]
    fn missing_fields_are_null_and_unknown_enums_are_kept() {
        let a = parse_alert(&raw(r#"{"id":"x1","severity":"Catastrophic"}"#)).unwrap();
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "severity")],
            Val::Text(Some("Catastrophic".into()))
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "title")],
            Val::Text(None)
        );
        assert!(a.last_update.is_none());
        assert!(a.evidence.is_empty());
    }

    #[test]
    fn malformed_alerts_name_their_id_and_reason() {
        let e = parse_alert(&raw(r#"{"id":"x2","lastUpdateTime":"yesterday"}"#)).unwrap_err();
        assert_eq!(e.id.as_deref(), Some("x2"));
        assert!(e.reason.contains("lastUpdateTime"), "{e}");
        let e = parse_alert(&raw(r#"{"severity":"High"}"#)).unwrap_err();
        assert!(e.id.is_none());
        let e = parse_alert(&raw(r#"{"id":"x3","incidentId":"twelve"}"#)).unwrap_err();
        assert!(e.reason.contains("incidentId"));
        let e = parse_alert(&raw(r#"[1,2]"#)).unwrap_err();
        assert!(e.reason.contains("object"));
    }
}
