//! MDE's alert JSON, parsed leniently into the stored shape ([`crate::model`]), exactly as
//! received.
//!
//! Every property is optional (older payloads lack newer fields), enums are open strings (unknown
//! values are stored as they come), and unknown properties survive in `raw`. Only an alert we
//! cannot key — not a JSON object, no string `id` — is malformed; one whose other properties have
//! the wrong shape is kept whole in `raw` with those columns NULL (noted in
//! [`AlertRow::coerced`]), and the sync refuses one without a usable `lastUpdateTime`.
//!
//! The text is read once ([`crate::fields`]): a string stays borrowed until its column takes it,
//! each property's column is found by its name, and nothing is built for a property without one.
//! The rows are exactly those of reading the alert into a `serde_json::Value` first
//! (`tests/mde_parse.rs` holds the two side by side).

use std::collections::HashMap;
use std::sync::LazyLock;

use serde::de::MapAccess;
use serde_json::{Value, value::RawValue};

use crate::fields::{self, Field, Item, Items, Props, Skip, Sorted, Top};
use crate::model::{
    ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, EvidenceRow, Kind, Malformed, Val, column_index,
    convert, null, opaque_evidence, or_null, property_index,
};

static ALERT_PROPERTIES: LazyLock<HashMap<&str, usize>> =
    LazyLock::new(|| property_index(ALERT_COLUMNS));
static EVIDENCE_PROPERTIES: LazyLock<HashMap<&str, usize>> =
    LazyLock::new(|| property_index(EVIDENCE_COLUMNS));

/// The properties of an alert that are stored in columns; of a duplicated one, the last.
struct AlertProps<'a> {
    id: Option<Field<'a>>,
    evidence: Option<Items<'a>>,
    /// In [`ALERT_COLUMNS`] order.
    columns: Vec<Option<Field<'a>>>,
}

impl Default for AlertProps<'_> {
    fn default() -> Self {
        Self {
            id: None,
            evidence: None,
            columns: vec![None; ALERT_COLUMNS.len()],
        }
    }
}

impl<'de> Props<'de> for AlertProps<'de> {
    fn read<A: MapAccess<'de>>(&mut self, name: &str, map: &mut A) -> Result<(), A::Error> {
        match (name, ALERT_PROPERTIES.get(name)) {
            ("id", _) => self.id = Some(map.next_value()?),
            ("evidence", _) => self.evidence = Some(map.next_value()?),
            (_, Some(&i)) => self.columns[i] = Some(map.next_value()?),
            (_, None) => {
                map.next_value::<Skip>()?;
            }
        }
        Ok(())
    }
}

/// Parses one MDE alert from its exact JSON text.
pub fn parse_alert(raw: &RawValue) -> Result<AlertRow, Malformed> {
    let text = raw.get();
    let props = read(text)?;
    let id = match props.id {
        Some(Field::Str(s)) if !s.is_empty() => s.into_owned(),
        _ => return Err(refused("no string \"id\"".into())),
    };
    let mut coerced = Vec::new();
    let slots: Vec<Option<&Field>> = props.columns.iter().map(Option::as_ref).collect();
    let mut values = columns(&slots, ALERT_COLUMNS, "", &mut coerced);
    values[column_index(ALERT_COLUMNS, "source")] = Val::Text(Some("mde".into()));
    let last_update = match &values[column_index(ALERT_COLUMNS, "last_update_time")] {
        Val::Time(t) => *t,
        _ => None,
    };
    let aad_tenant_id = match &values[column_index(ALERT_COLUMNS, "aad_tenant_id")] {
        Val::Text(t) => t.clone(),
        _ => None,
    };
    let evidence = evidence_rows(props.evidence.as_ref(), &mut coerced);
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

/// The alert's stored properties, or why it is refused: not JSON, or not an object.
fn read(text: &str) -> Result<AlertProps<'_>, Malformed> {
    match fields::read_top(text) {
        Ok(Top::Object(props)) => Ok(props),
        Ok(Top::Other) => Err(refused("not a JSON object".into())),
        Err(e) => Err(refused(format!("not JSON: {e}"))),
    }
}

fn refused(reason: String) -> Malformed {
    Malformed { id: None, reason }
}

/// The columns of `spec` from `slots` (the value of each column's property, in `spec` order). A
/// value of the wrong shape becomes the column's NULL and is noted in `coerced` (prefixed with
/// `at`, e.g. `evidence[2].`).
fn columns(
    slots: &[Option<&Field>],
    spec: &[(&str, &str, Kind)],
    at: &str,
    coerced: &mut Vec<String>,
) -> Vec<Val> {
    spec.iter()
        .zip(slots)
        .map(|((_, prop, kind), field)| {
            let what = format_args!("{at}{prop}");
            or_null(convert_field(*field, *kind), *kind, &what, coerced)
        })
        .collect()
}

/// [`convert`] of a [`Field`]: a string into a text column without a copy of the whole value.
fn convert_field(field: Option<&Field>, kind: Kind) -> Result<Val, String> {
    match field {
        None | Some(Field::Null) => Ok(null(kind)),
        Some(Field::Str(s)) if kind == Kind::Text => Ok(Val::Text(Some(s.to_string()))),
        Some(Field::Str(s)) => convert(Some(&Value::String(s.to_string())), kind),
        Some(Field::Other(v)) => convert(Some(v), kind),
    }
}

/// One row per item of `evidence` when it is an array; none, noted in `coerced` unless null or
/// absent, when it is not.
fn evidence_rows(evidence: Option<&Items>, coerced: &mut Vec<String>) -> Vec<EvidenceRow> {
    match evidence {
        None | Some(Items::Other(Field::Null)) => Vec::new(),
        Some(Items::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| evidence_row(item, &format!("evidence[{i}]"), coerced))
            .collect(),
        Some(Items::Other(_)) => {
            coerced.push("evidence: not an array".into());
            Vec::new()
        }
    }
}

/// One evidence item's row; `raw` is its JSON as serde_json writes a `Value` (compact, keys
/// sorted), as it always has been.
fn evidence_row(item: &Item, at: &str, coerced: &mut Vec<String>) -> EvidenceRow {
    let props = match item {
        Item::Object(props) => fields::sorted(props),
        Item::Other(other) => return opaque_evidence(json(other), at, coerced),
    };
    let mut slots = vec![None; EVIDENCE_COLUMNS.len()];
    for (name, value) in props.iter().copied() {
        if let Some(&i) = EVIDENCE_PROPERTIES.get(name.as_ref()) {
            slots[i] = Some(value);
        }
    }
    EvidenceRow {
        values: columns(&slots, EVIDENCE_COLUMNS, &format!("{at}."), coerced),
        raw: json(&Sorted(&props)),
    }
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).expect("a JSON value serialises")
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
