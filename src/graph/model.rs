//! The Graph `alerts_v2` alert as stored: the same `alerts` and `alert_evidence` columns as an MDE
//! alert ([`crate::model`]), filled from Graph's properties, with Graph's enum values mapped
//! to the values MDE rows already use, so one query works whatever the source.
//!
//! Like the MDE model it is lenient: every property is optional, unknown enum values and unknown
//! evidence types are kept (as themselves, or with only the first letter raised), and `raw` is
//! the alert's text exactly as received. Only an alert without a string `id` is malformed, and it
//! is refused alone; a property of the wrong shape leaves its column NULL (noted in
//! [`AlertRow::coerced`]) and the alert is kept.

use std::collections::HashMap;

use serde_json::{Map, Value, value::RawValue};

use crate::model::{
    ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, EvidenceRow, Kind, Malformed, Val, column_index,
    convert_or_null, null, opaque_evidence,
};

/// `(column, property)` read as is from a Graph alert (`kind` from [`ALERT_COLUMNS`]).
const ALERT_PROPERTIES: &[(&str, &str)] = &[
    ("incident_id", "incidentId"),
    ("assigned_to", "assignedTo"),
    ("detector_id", "detectorId"),
    ("category", "category"),
    ("threat_family_name", "threatFamilyName"),
    ("threat_name", "threatDisplayName"),
    ("title", "title"),
    ("description", "description"),
    ("alert_creation_time", "createdDateTime"),
    ("first_event_time", "firstActivityDateTime"),
    ("last_event_time", "lastActivityDateTime"),
    ("last_update_time", "lastUpdateDateTime"),
    ("resolved_time", "resolvedDateTime"),
    ("aad_tenant_id", "tenantId"),
    ("mitre_techniques", "mitreTechniques"),
    ("comments", "comments"),
    ("service_source", "serviceSource"),
    ("graph_detection_source", "detectionSource"),
    ("provider_alert_id", "providerAlertId"),
    ("alert_web_url", "alertWebUrl"),
    ("incident_web_url", "incidentWebUrl"),
    ("actor_display_name", "actorDisplayName"),
    ("recommended_actions", "recommendedActions"),
    ("product_name", "productName"),
    ("alert_policy_id", "alertPolicyId"),
    ("categories", "categories"),
    ("system_tags", "systemTags"),
    ("additional_data", "additionalData"),
    ("custom_details", "customDetails"),
];

/// Maps one Graph enum member to the MDE value (`None`: NULL).
type Vocabulary = fn(&str) -> Option<String>;

/// `(column, property, vocabulary)` for the typed enum columns, mapped to MDE's values.
const ALERT_ENUMS: &[(&str, &str, Vocabulary)] = &[
    ("severity", "severity", severity),
    ("status", "status", pascal_some),
    ("classification", "classification", classification),
    ("determination", "determination", determination),
    ("investigation_state", "investigationState", pascal_some),
    ("detection_source", "detectionSource", detection_source),
];

/// `(column, paths)` for evidence: the first path present (not null) fills the column. A path is
/// a property, or a property of a nested object (`fileDetails.sha1`).
const EVIDENCE_PATHS: &[(&str, &[&str])] = &[
    ("evidence_creation_time", &["createdDateTime"]),
    ("sha1", &["fileDetails.sha1", "imageFile.sha1"]),
    ("sha256", &["fileDetails.sha256", "imageFile.sha256"]),
    ("file_name", &["fileDetails.fileName", "imageFile.fileName"]),
    ("file_path", &["fileDetails.filePath", "imageFile.filePath"]),
    ("process_id", &["processId"]),
    ("process_command_line", &["processCommandLine"]),
    ("process_creation_time", &["processCreationDateTime"]),
    ("parent_process_id", &["parentProcessId"]),
    (
        "parent_process_creation_time",
        &["parentProcessCreationDateTime"],
    ),
    (
        "parent_process_file_name",
        &["parentProcessImageFile.fileName"],
    ),
    (
        "parent_process_file_path",
        &["parentProcessImageFile.filePath"],
    ),
    ("ip_address", &["ipAddress", "lastIpAddress"]),
    ("url", &["url"]),
    ("registry_key", &["registryKey"]),
    ("registry_hive", &["registryHive"]),
    ("registry_value_type", &["registryValueType"]),
    ("registry_value", &["registryValue"]),
    ("account_name", &["userAccount.accountName"]),
    ("domain_name", &["userAccount.domainName"]),
    ("user_sid", &["userAccount.userSid"]),
    ("aad_user_id", &["userAccount.azureAdUserId"]),
    ("user_principal_name", &["userAccount.userPrincipalName"]),
    ("odata_type", &["@odata.type"]),
    ("verdict", &["verdict"]),
    ("remediation_status", &["remediationStatus"]),
    ("remediation_status_details", &["remediationStatusDetails"]),
    ("roles", &["roles"]),
    ("detailed_roles", &["detailedRoles"]),
    ("tags", &["tags"]),
    ("mde_device_id", &["mdeDeviceId"]),
    ("azure_ad_device_id", &["azureAdDeviceId"]),
    ("device_dns_name", &["deviceDnsName"]),
    ("os_platform", &["osPlatform"]),
    ("os_build", &["osBuild"]),
    ("device_version", &["version"]),
    ("health_status", &["healthStatus"]),
    ("risk_score", &["riskScore"]),
    ("onboarding_status", &["onboardingStatus"]),
    ("defender_av_status", &["defenderAvStatus"]),
    ("rbac_group_id", &["rbacGroupId"]),
    ("rbac_group_name", &["rbacGroupName"]),
    ("first_seen_time", &["firstSeenDateTime"]),
    ("ip_interfaces", &["ipInterfaces"]),
    ("logged_on_users", &["loggedOnUsers"]),
    ("vm_metadata", &["vmMetadata"]),
    ("md5", &["fileDetails.md5", "imageFile.md5"]),
    ("file_size", &["fileDetails.fileSize", "imageFile.fileSize"]),
    (
        "file_publisher",
        &["fileDetails.filePublisher", "imageFile.filePublisher"],
    ),
    ("signer", &["fileDetails.signer", "imageFile.signer"]),
    ("issuer", &["fileDetails.issuer", "imageFile.issuer"]),
    ("parent_process_sha1", &["parentProcessImageFile.sha1"]),
    ("parent_process_sha256", &["parentProcessImageFile.sha256"]),
    ("user_display_name", &["userAccount.displayName"]),
    ("registry_value_name", &["registryValueName"]),
    ("country_letter_code", &["countryLetterCode"]),
];

const EVIDENCE_TYPE_PREFIX: &str = "#microsoft.graph.security.";

/// Parses one Graph alert from its exact JSON text into the common columns.
pub fn parse_alert(raw: &RawValue) -> Result<AlertRow, Malformed> {
    let text = raw.get();
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => {
            return Err(Malformed {
                id: None,
                reason: "not a JSON object".into(),
            });
        }
        Err(e) => {
            return Err(Malformed {
                id: None,
                reason: format!("not JSON: {e}"),
            });
        }
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
    let mut coerced = Vec::new();
    let mut cols: HashMap<&str, Val> = HashMap::new();
    for (col, prop) in ALERT_PROPERTIES {
        let v = convert_or_null(obj.get(*prop), alert_kind(col), prop, &mut coerced);
        cols.insert(col, v);
    }
    for (col, prop, map) in ALERT_ENUMS {
        let v = match obj.get(*prop) {
            Some(Value::String(s)) => map(s),
            None | Some(Value::Null) => None,
            Some(other) => Some(other.to_string()),
        };
        cols.insert(col, Val::Text(v));
    }
    cols.insert("source", Val::Text(Some("graph".into())));

    let items: &[Value] = match obj.get("evidence") {
        None | Some(Value::Null) => &[],
        Some(Value::Array(items)) => items,
        Some(_) => {
            coerced.push("evidence: not an array".into());
            &[]
        }
    };
    let mut evidence = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("evidence[{i}]");
        evidence.push(match item {
            Value::Object(e) => map_evidence(e, &at, &mut coerced),
            other => opaque_evidence(other.to_string(), &at, &mut coerced),
        });
    }
    // Graph has no device or user at the top level; MDE's columns come from the first device
    // and user evidence (the configure-siem mapping).
    if let Some(device) = first_of_type(items, "deviceEvidence") {
        for (col, prop) in [
            ("machine_id", "mdeDeviceId"),
            ("computer_dns_name", "deviceDnsName"),
            ("rbac_group_name", "rbacGroupName"),
        ] {
            let v = convert_or_null(device.get(prop), Kind::Text, &prop, &mut coerced);
            cols.insert(col, v);
        }
    }
    if let Some(user) = first_of_type(items, "userEvidence")
        .and_then(|u| u.get("userAccount"))
        .and_then(Value::as_object)
    {
        let related = serde_json::json!({
            "userName": user.get("accountName").cloned().unwrap_or(Value::Null),
            "domainName": user.get("domainName").cloned().unwrap_or(Value::Null),
        });
        cols.insert("related_user", Val::Json(Some(related.to_string())));
    }

    let values: Vec<Val> = ALERT_COLUMNS
        .iter()
        .map(|(c, _, kind)| cols.remove(c).unwrap_or_else(|| null(*kind)))
        .collect();
    let last_update = match &values[column_index(ALERT_COLUMNS, "last_update_time")] {
        Val::Time(t) => *t,
        _ => None,
    };
    let aad_tenant_id = match &values[column_index(ALERT_COLUMNS, "aad_tenant_id")] {
        Val::Text(t) => t.clone(),
        _ => None,
    };
    Ok(AlertRow {
        id,
        last_update,
        aad_tenant_id,
        values,
        evidence,
        raw: text.to_owned(),
        coerced,
    })
}

/// One evidence item: its type in `odata_type` and, MDE-style, in `entity_type`; the common
/// columns from the type's own properties; `raw` as received. A property of the wrong shape is
/// NULL and noted in `coerced` as `at.property: why`.
pub fn map_evidence(e: &Map<String, Value>, at: &str, coerced: &mut Vec<String>) -> EvidenceRow {
    let mut cols: HashMap<&str, Val> = HashMap::new();
    for (col, paths) in EVIDENCE_PATHS {
        let found = paths
            .iter()
            .map(|p| lookup(e, p))
            .find(|v| !matches!(v, None | Some(Value::Null)))
            .flatten();
        let kind = evidence_kind(col);
        let v = convert_or_null(found, kind, &format_args!("{at}.{}", paths[0]), coerced);
        cols.insert(col, v);
    }
    let entity = e
        .get("@odata.type")
        .and_then(Value::as_str)
        .map(entity_type);
    cols.insert("entity_type", Val::Text(entity));
    let detection = match e.get("detectionStatus") {
        Some(Value::String(s)) => pascal_some(s),
        _ => None,
    };
    cols.insert("detection_status", Val::Text(detection));
    let values = EVIDENCE_COLUMNS
        .iter()
        .map(|(c, _, kind)| cols.remove(c).unwrap_or_else(|| null(*kind)))
        .collect();
    EvidenceRow {
        values,
        raw: Value::Object(e.clone()).to_string(),
    }
}

/// `#microsoft.graph.security.processEvidence` -> `Process`: the MDE `entityType` vocabulary.
/// Types outside the Graph security namespace are kept whole.
pub fn entity_type(odata_type: &str) -> String {
    match odata_type.strip_prefix(EVIDENCE_TYPE_PREFIX) {
        Some(name) => {
            let name = name.strip_suffix("Evidence").unwrap_or(name);
            pascal(name)
        }
        None => odata_type.to_owned(),
    }
}

fn first_of_type<'a>(items: &'a [Value], suffix: &str) -> Option<&'a Map<String, Value>> {
    items.iter().filter_map(Value::as_object).find(|e| {
        e.get("@odata.type")
            .and_then(Value::as_str)
            .and_then(|t| t.strip_prefix(EVIDENCE_TYPE_PREFIX))
            == Some(suffix)
    })
}

fn lookup<'a>(obj: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    // `@odata.type` is one property whose name holds a dot
    if let Some(v) = obj.get(path) {
        return Some(v);
    }
    let (head, rest) = path.split_once('.')?;
    lookup(obj.get(head)?.as_object()?, rest)
}

fn alert_kind(col: &str) -> Kind {
    ALERT_COLUMNS[column_index(ALERT_COLUMNS, col)].2
}

fn evidence_kind(col: &str) -> Kind {
    EVIDENCE_COLUMNS[column_index(EVIDENCE_COLUMNS, col)].2
}

/// `inProgress` -> `InProgress`: Graph's camelCase enum members in MDE's PascalCase.
pub fn pascal(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn pascal_some(s: &str) -> Option<String> {
    Some(pascal(s))
}

/// Graph `alertSeverity` -> MDE `severity`: `unknown` is MDE's `UnSpecified`.
pub fn severity(s: &str) -> Option<String> {
    Some(match s {
        "unknown" => "UnSpecified".into(),
        other => pascal(other),
    })
}

/// Graph `alertClassification` -> MDE: an unset classification is `unknown` in Graph and null in
/// MDE.
pub fn classification(s: &str) -> Option<String> {
    match s {
        "unknown" => None,
        other => Some(pascal(other)),
    }
}

/// Graph `alertDetermination` (the CSDL members) -> MDE's documented wire names.
pub fn determination(s: &str) -> Option<String> {
    Some(match s {
        "unknown" => return None,
        "compromisedAccount" => "CompromisedUser".into(),
        "notMalicious" => "Clean".into(),
        "notEnoughDataToValidate" => "InsufficientData".into(),
        "confirmedActivity" => "ConfirmedUserActivity".into(),
        other => pascal(other),
    })
}

/// Graph `detectionSource` -> MDE's `detectionSource` strings where a counterpart is known
/// (graph-alerts-v2.md §7); the Graph value itself is kept in `graph_detection_source`.
pub fn detection_source(s: &str) -> Option<String> {
    Some(match s {
        "microsoftDefenderForEndpoint" => "WindowsDefenderAtp".into(),
        "antivirus" => "WindowsDefenderAv".into(),
        "customTi" => "CustomerTI".into(),
        other => pascal(other),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(row: &AlertRow, name: &str) -> Val {
        row.values[column_index(ALERT_COLUMNS, name)].clone()
    }

    fn text(s: &str) -> Val {
        Val::Text(Some(s.into()))
    }

    #[test]
    fn enums_map_to_the_mde_vocabulary_and_unknown_members_are_kept() {
        let raw = RawValue::from_string(
            r#"{"id":"da1_1","status":"inProgress","severity":"unknown","classification":"unknown","determination":"notMalicious","detectionSource":"customTi","investigationState":"someNewState","lastUpdateDateTime":"2026-01-01T00:00:00.123Z"}"#.into(),
        )
        .unwrap();
        let a = parse_alert(&raw).unwrap();
        assert_eq!(col(&a, "status"), text("InProgress"));
        assert_eq!(col(&a, "severity"), text("UnSpecified"));
        assert_eq!(col(&a, "classification"), Val::Text(None));
        assert_eq!(col(&a, "determination"), text("Clean"));
        assert_eq!(col(&a, "detection_source"), text("CustomerTI"));
        assert_eq!(col(&a, "graph_detection_source"), text("customTi"));
        assert_eq!(col(&a, "investigation_state"), text("SomeNewState"));
        assert_eq!(col(&a, "source"), text("graph"));
        for (g, m) in [
            ("high", "High"),
            ("informational", "Informational"),
            ("medium", "Medium"),
        ] {
            assert_eq!(severity(g).as_deref(), Some(m));
        }
        for (g, m) in [
            ("compromisedAccount", "CompromisedUser"),
            ("notEnoughDataToValidate", "InsufficientData"),
            ("confirmedActivity", "ConfirmedUserActivity"),
            ("multiStagedAttack", "MultiStagedAttack"),
        ] {
            assert_eq!(determination(g).as_deref(), Some(m));
        }
        assert_eq!(
            classification("informationalExpectedActivity").as_deref(),
            Some("InformationalExpectedActivity")
        );
    }

    #[test]
    fn an_out_of_spec_verdict_and_an_unknown_evidence_type_are_kept() {
        let raw = RawValue::from_string(
            r##"{"id":"da2_2","evidence":[{"@odata.type":"#microsoft.graph.security.ipEvidence","verdict":"5","ipAddress":"203.0.113.7","countryLetterCode":"NL"},{"@odata.type":"#microsoft.graph.security.aiAgentEvidence","createdDateTime":"2026-01-01T00:00:00Z"}]}"##.into(),
        )
        .unwrap();
        let a = parse_alert(&raw).unwrap();
        let ev = |i: usize, name: &str| {
            a.evidence[i].values[column_index(EVIDENCE_COLUMNS, name)].clone()
        };
        assert_eq!(ev(0, "verdict"), text("5"));
        assert_eq!(ev(0, "entity_type"), text("Ip"));
        assert_eq!(ev(0, "ip_address"), text("203.0.113.7"));
        assert_eq!(ev(0, "country_letter_code"), text("NL"));
        assert_eq!(ev(1, "entity_type"), text("AiAgent"));
        assert_eq!(
            ev(1, "odata_type"),
            text("#microsoft.graph.security.aiAgentEvidence")
        );
    }

    #[test]
    fn graph_fields_of_the_wrong_shape_are_null_and_noted_only_a_missing_id_refuses() {
        let raw =
            RawValue::from_string(r#"{"id":"da3_3","lastUpdateDateTime":"yesterday"}"#.into())
                .unwrap();
        let a = parse_alert(&raw).unwrap();
        assert!(a.last_update.is_none(), "the sync refuses it for that");
        assert!(
            a.coerced[0].starts_with("lastUpdateDateTime:"),
            "{:?}",
            a.coerced
        );
        let text = r##"{"id":"da4_4","incidentId":"x","lastUpdateDateTime":"2026-01-01T00:00:00Z","evidence":[7,{"@odata.type":"#microsoft.graph.security.processEvidence","processId":"p"}]}"##;
        let a = parse_alert(&RawValue::from_string(text.into()).unwrap()).unwrap();
        assert_eq!(a.raw, text);
        assert_eq!(a.evidence.len(), 2);
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "incident_id")],
            Val::Int(None)
        );
        let names: Vec<&str> = a
            .coerced
            .iter()
            .map(|c| c.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            ["incidentId", "evidence[0]", "evidence[1].processId"]
        );
        let raw = RawValue::from_string(r#"{"severity":"high"}"#.into()).unwrap();
        assert!(parse_alert(&raw).unwrap_err().id.is_none());
    }
}
