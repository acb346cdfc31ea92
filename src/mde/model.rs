//! MDE's alert JSON, parsed leniently into the stored shape ([`crate::model`]), exactly as
//! received.
//!
//! Every property is optional (older payloads lack newer fields), enums are open strings (unknown
//! values are stored as they come), and unknown properties survive in `raw`. Only an alert we
//! cannot key — not a JSON object, no string `id` — is malformed; one whose other properties have
//! the wrong shape is kept whole in `raw` with those columns NULL (noted in
//! [`AlertRow::coerced`]), and the sync refuses one without a usable `lastUpdateTime`.

use serde_json::{Value, value::RawValue};

use crate::model::{
    ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, EvidenceRow, Malformed, Val, column_index, columns,
    opaque_evidence,
};

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
    let mut coerced = Vec::new();
    let mut values = columns(&obj, ALERT_COLUMNS, "", &mut coerced);
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
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let at = format!("evidence[{i}]");
                match item {
                    Value::Object(e) => EvidenceRow {
                        values: columns(e, EVIDENCE_COLUMNS, &format!("{at}."), &mut coerced),
                        raw: item.to_string(),
                    },
                    other => opaque_evidence(other, &at, &mut coerced),
                }
            })
            .collect(),
        Some(_) => {
            coerced.push("evidence: not an array".into());
            Vec::new()
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

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
    fn only_alerts_without_an_id_are_malformed() {
        let e = parse_alert(&raw(r#"{"severity":"High"}"#)).unwrap_err();
        assert!(e.id.is_none());
        let e = parse_alert(&raw(r#"[1,2]"#)).unwrap_err();
        assert!(e.reason.contains("object"));
    }

    #[test]
    fn a_field_of_the_wrong_shape_is_null_and_noted_and_the_alert_kept_whole() {
        let text = r#"{"id":"x3","incidentId":"twelve","lastUpdateTime":"2021-01-26T20:33:59.2Z","firstEventTime":"2021-01-26T20:31:32","evidence":[{"entityType":"File","processId":"x"},"oops"]}"#;
        let a = parse_alert(&raw(text)).unwrap();
        assert_eq!(a.raw, text);
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "incident_id")],
            Val::Int(None)
        );
        assert_eq!(
            a.values[column_index(ALERT_COLUMNS, "first_event_time")],
            Val::Time(None)
        );
        assert!(a.last_update.is_some());
        assert_eq!(a.evidence.len(), 2, "one row per evidence item");
        assert_eq!(a.evidence[1].raw, "\"oops\"");
        assert_eq!(
            a.evidence[0].values[column_index(EVIDENCE_COLUMNS, "entity_type")],
            Val::Text(Some("File".into()))
        );
        let names: Vec<&str> = a
            .coerced
            .iter()
            .map(|c| c.split(':').next().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "incidentId",
                "firstEventTime",
                "evidence[0].processId",
                "evidence[1]"
            ]
        );
        // an unusable lastUpdateTime is NULL too: the sync refuses the alert for it
        let a = parse_alert(&raw(r#"{"id":"x2","lastUpdateTime":"yesterday"}"#)).unwrap();
        assert!(a.last_update.is_none());
        assert_eq!(a.coerced.len(), 1);
    }
}
