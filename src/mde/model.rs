//! MDE's alert JSON, parsed leniently into the stored shape ([`crate::model`]), exactly as
//! received.
//!
//! Every property is optional (older payloads lack newer fields), enums are open strings (unknown
//! values are stored as they come), and unknown properties survive in `raw`. Only an alert we
//! cannot key or order — no string `id`, or a timestamp or number that does not parse — is
//! malformed; it is refused alone, never the page it came in.

use serde_json::{Value, value::RawValue};

use crate::model::{
    ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, EvidenceRow, Malformed, Val, column_index, columns,
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
