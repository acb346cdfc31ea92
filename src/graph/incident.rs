//! The Graph security incident as stored: the `incidents` columns ([`INCIDENT_COLUMNS`]) filled
//! from Graph's properties, with Graph's enum values mapped to the values the alert columns
//! already use (`High`, `InProgress`, `TruePositive`, ...), so alerts and incidents join in one
//! query. As lenient as the alert model: only an incident without a string `id` is refused; a
//! property of the wrong shape leaves its column NULL (noted in `coerced`); `raw` is the text
//! exactly as received.

use serde_json::{Value, value::RawValue};

use super::model::{classification, determination, pascal, severity};
use crate::model::{AlertRow, INCIDENT_COLUMNS, Malformed, Val, column_index, convert_or_null};

/// Parses one Graph incident from its exact JSON text.
pub fn parse_incident(raw: &RawValue) -> Result<AlertRow, Malformed> {
    let text = raw.get();
    let obj = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(obj)) => obj,
        Ok(_) => return Err(malformed("not a JSON object")),
        Err(e) => return Err(malformed(&format!("not JSON: {e}"))),
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        // Graph documents a string; a number is the same id
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(malformed("no string \"id\"")),
    };
    let mut coerced = Vec::new();
    let values: Vec<Val> = INCIDENT_COLUMNS
        .iter()
        .map(|(col, prop, kind)| match (enum_map(col), obj.get(*prop)) {
            (Some(map), Some(Value::String(s))) => Val::Text(map(s)),
            (Some(_), None | Some(Value::Null)) => Val::Text(None),
            (Some(_), Some(other)) => Val::Text(Some(other.to_string())),
            (None, v) => convert_or_null(v, *kind, prop, &mut coerced),
        })
        .collect();
    let last_update = match &values[column_index(INCIDENT_COLUMNS, "last_update_time")] {
        Val::Time(t) => *t,
        _ => None,
    };
    let aad_tenant_id = match &values[column_index(INCIDENT_COLUMNS, "aad_tenant_id")] {
        Val::Text(t) => t.clone(),
        _ => None,
    };
    Ok(AlertRow {
        id,
        last_update,
        aad_tenant_id,
        values,
        evidence: Vec::new(),
        raw: text.to_owned(),
        coerced,
    })
}

fn malformed(reason: &str) -> Malformed {
    Malformed {
        id: None,
        reason: reason.into(),
    }
}

/// The mapping of an enum column onto the alert columns' vocabulary.
fn enum_map(col: &str) -> Option<fn(&str) -> Option<String>> {
    match col {
        "status" => Some(|s| Some(pascal(s))),
        "severity" => Some(severity),
        "classification" => Some(classification),
        "determination" => Some(determination),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(row: &AlertRow, name: &str) -> Val {
        row.values[column_index(INCIDENT_COLUMNS, name)].clone()
    }

    fn text(s: &str) -> Val {
        Val::Text(Some(s.into()))
    }

    #[test]
    fn an_incident_maps_to_the_alert_vocabulary_and_keeps_its_raw_text() {
        let json = r#"{"id":"2972395","tenantId":"00000000-0000-4000-a000-000000000001","status":"redirected","severity":"high","classification":"truePositive","determination":"compromisedUser","assignedTo":"analyst@contoso.example","customTags":["x"],"systemTags":[],"comments":[{"comment":"c"}],"createdDateTime":"2026-07-23T19:26:29.47Z","lastUpdateDateTime":"2026-07-23T19:27:00Z","redirectIncidentId":"2972396","incidentWebUrl":"https://security.microsoft.com/incidents/2972395","displayName":"Multi-stage incident","newField":1}"#;
        let raw = RawValue::from_string(json.into()).unwrap();
        let row = parse_incident(&raw).unwrap();
        assert_eq!(row.id, "2972395");
        assert_eq!(row.raw, json);
        assert_eq!(col(&row, "status"), text("Redirected"));
        assert_eq!(col(&row, "severity"), text("High"));
        assert_eq!(col(&row, "classification"), text("TruePositive"));
        assert_eq!(col(&row, "determination"), text("CompromisedUser"));
        assert_eq!(col(&row, "redirect_incident_id"), text("2972396"));
        assert_eq!(col(&row, "custom_tags"), Val::Json(Some(r#"["x"]"#.into())));
        assert!(row.last_update.is_some());
        assert_eq!(
            row.aad_tenant_id.as_deref(),
            Some("00000000-0000-4000-a000-000000000001")
        );
        assert!(row.coerced.is_empty());
    }

    #[test]
    fn a_property_of_the_wrong_shape_is_null_and_only_a_missing_id_refuses() {
        let raw =
            RawValue::from_string(r#"{"id":"7","createdDateTime":42,"status":"active"}"#.into())
                .unwrap();
        let row = parse_incident(&raw).unwrap();
        assert_eq!(col(&row, "creation_time"), Val::Time(None));
        assert_eq!(row.coerced.len(), 1, "{:?}", row.coerced);
        assert_eq!(col(&row, "status"), text("Active"));
        let none = RawValue::from_string(r#"{"status":"active"}"#.into()).unwrap();
        assert!(parse_incident(&none).is_err());
    }
}
