//! The MDE parser ([`parse_alert`]) against the parser it replaced, which read the alert into a
//! `serde_json::Value` tree ([`reference_parse_alert`]): the same row, field by field, for
//! simulated alerts, Microsoft's Graph examples, and hostile shapes of every property.

use mde_sync::mde::model::parse_alert;
use mde_sync::model::{
    ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, EvidenceRow, Kind, Malformed, Val, column_index,
    convert_or_null, opaque_evidence,
};
use mde_sync::simulator::{SimConfig, SimTenant, Simulator, TenantKind, tenant_id};
use serde_json::{Map, Value, value::RawValue};

fn refused(reason: String) -> Malformed {
    Malformed { id: None, reason }
}

/// The parser as it was: the whole alert read into a `Value`, each column looked up in its map.
fn reference_parse_alert(text: &str) -> Result<AlertRow, Malformed> {
    let value: Value = serde_json::from_str(text).map_err(|e| refused(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(refused("not a JSON object".into()));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(refused("no string \"id\"".into())),
    };
    let mut coerced = Vec::new();
    let mut values = reference_columns(&obj, ALERT_COLUMNS, "", &mut coerced);
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
                        values: reference_columns(
                            e,
                            EVIDENCE_COLUMNS,
                            &format!("{at}."),
                            &mut coerced,
                        ),
                        raw: item.to_string(),
                    },
                    other => opaque_evidence(other.to_string(), &at, &mut coerced),
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

fn reference_columns(
    obj: &Map<String, Value>,
    spec: &[(&str, &str, Kind)],
    at: &str,
    coerced: &mut Vec<String>,
) -> Vec<Val> {
    spec.iter()
        .map(|(_, prop, kind)| {
            convert_or_null(
                obj.get(*prop).filter(|_| !prop.is_empty()),
                *kind,
                &format_args!("{at}{prop}"),
                coerced,
            )
        })
        .collect()
}

/// Asserts that both parsers give the same result for `text`, field by field.
fn assert_same(text: &str) {
    // as the sync hands it over: a `RawValue`, without the whitespace around the value
    let raw = RawValue::from_string(text.to_owned()).expect("reachable: a RawValue");
    let (new, old) = (parse_alert(&raw), reference_parse_alert(raw.get()));
    let (new, old) = match (new, old) {
        (Ok(new), Ok(old)) => (new, old),
        (Err(new), Err(old)) => return assert_eq!(new, old, "refusal of {text}"),
        (new, old) => panic!("{text}\nnew: {new:?}\nreference: {old:?}"),
    };
    assert_eq!(new.id, old.id, "id of {text}");
    assert_eq!(new.last_update, old.last_update, "last_update of {text}");
    assert_eq!(new.aad_tenant_id, old.aad_tenant_id, "tenant of {text}");
    for ((col, _, _), (n, o)) in ALERT_COLUMNS.iter().zip(new.values.iter().zip(&old.values)) {
        assert_eq!(n, o, "{col} of {text}");
    }
    assert_eq!(new.evidence.len(), old.evidence.len(), "evidence of {text}");
    for (i, (n, o)) in new.evidence.iter().zip(&old.evidence).enumerate() {
        for ((col, _, _), (n, o)) in EVIDENCE_COLUMNS.iter().zip(n.values.iter().zip(&o.values)) {
            assert_eq!(n, o, "evidence[{i}].{col} of {text}");
        }
        assert_eq!(n.raw, o.raw, "evidence[{i}].raw of {text}");
    }
    assert_eq!(new.raw, old.raw, "raw of {text}");
    assert_eq!(new.coerced, old.coerced, "coerced of {text}");
    assert_eq!(new, old, "{text}");
}

/// Every alert of `tenants` simulated tenants of `alerts` alerts each, with evidence, as the API
/// serves them.
fn simulated(tenants: usize, alerts: usize) -> Vec<String> {
    let sim = Simulator::new(SimConfig::new(
        (1..=tenants)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, alerts))
            .collect(),
    ));
    (1..=tenants)
        .flat_map(|n| sim.truth(&tenant_id(n)).into_values())
        .collect()
}

/// Values of every JSON shape, including those a column does not expect.
const SHAPES: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "-0",
    "12",
    "-12",
    "1.5",
    "-1.0",
    "1e3",
    "1E-7",
    "2.5e+2",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "123456789012345678901234567890",
    r#""""#,
    r#""x""#,
    r#""12""#,
    r#"" 12""#,
    r#""-7""#,
    r#""2021-01-26T20:33:59.2Z""#,
    r#""2021-01-26T20:31:32""#,
    r#""\u00e9\/\"\\\b\f\n\r\t""#,
    r#""\ud83d\ude00 é ✓""#,
    r#""nul\u0000 and \u001f""#,
    "[]",
    "{}",
    r#"["a",1,null,{"b":[true]}]"#,
    r#"{"z":1,"a":{"y":[1,2],"b":"\u00e9"},"a":2}"#,
    "{ \"b\" : 1 ,\n\t\"a\" : [ 1 , 2 ] }",
    r#"{"\u0062":1,"a\/":"\/"}"#,
];

/// Each shape in each alert property, in `id` and `evidence`, in each evidence property and as
/// an evidence item, as `evidence` and as the whole text.
fn shapes_everywhere() -> Vec<String> {
    let mut props: Vec<&str> = ALERT_COLUMNS.iter().map(|(_, p, _)| *p).collect();
    props.extend(["id", "evidence", "someFutureField", ""]);
    let mut item_props: Vec<&str> = EVIDENCE_COLUMNS.iter().map(|(_, p, _)| *p).collect();
    item_props.extend(["someFutureField", ""]);
    let mut out = Vec::new();
    for shape in SHAPES {
        out.push((*shape).to_owned());
        out.push(format!(r#"{{"id":{shape}}}"#));
        for prop in &props {
            out.push(format!(r#"{{"id":"a1","{prop}":{shape}}}"#));
        }
        for prop in &item_props {
            out.push(format!(
                r#"{{"id":"a1","evidence":[{{"entityType":"File","{prop}":{shape}}},{shape}]}}"#
            ));
        }
    }
    out
}

/// Values nested `depth` deep, around serde_json's limit of 128 levels, where alert and evidence
/// put them.
fn deep_values() -> Vec<String> {
    let mut out = Vec::new();
    for depth in [125, 126, 127, 128, 200] {
        let v = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        for prop in ["someFutureField", "title", "comments", "incidentId"] {
            out.push(format!(r#"{{"id":"a1","{prop}":{v}}}"#));
        }
        out.push(format!(r#"{{"id":"a1","evidence":[{{"fileName":{v}}}]}}"#));
        out.push(format!(r#"{{"id":"a1","evidence":[{v}]}}"#));
        out.push(format!(r#"{{"id":"a1","evidence":{v}}}"#));
    }
    out
}

/// Whole alerts with duplicate, escaped or spaced keys, and texts serde_json's `RawValue` lets
/// through but a `Value` refuses.
const HOSTILE: &[&str] = &[
    r#"{"id":"a1","id":7}"#,
    r#"{"id":7,"id":"a1"}"#,
    r#"{"id":""}"#,
    r#"{"severity":"High"}"#,
    r#"{"id":"a1","severity":"Low","severity":null}"#,
    r#"{"id":"a1","incidentId":"x","incidentId":5}"#,
    r#"{"id":"a1","incidentId":5,"incidentId":"x"}"#,
    r#"{"id":"a1","evidence":[{}],"evidence":"x"}"#,
    r#"{"id":"a1","evidence":"x","evidence":[{"fileName":"f"}]}"#,
    r#"{"id":"a1","evidence":[{"fileName":"a","fileName":"b","processId":1,"processId":"x"}]}"#,
    r#"{"id":"a1","evidence":[{"b":1,"a":2,"b":3,"a":{"d":4,"c":5}}]}"#,
    r#"{"\u0069d":"a1","sev\u0065rity":"High","evidence":[{"entity\u0054ype":"File"}]}"#,
    r#"{"id":"\u00e9t\u00e9\/","title":"caf\u00e9 \"x\"","mitreTechniques":["\u00e9"]}"#,
    " \n{ \"id\" :\t\"a1\" , \"evidence\" : [ { \"sha1\" : \"ab\" } , 3 ] }\r\n ",
    r#"{"id":"a1","someFutureField":1e400}"#,
    r#"{"id":"a1","someFutureField":-1e400}"#,
    r#"{"id":"a1","title":1e309}"#,
    r#"{"id":"a1","evidence":[{"future":2e308}]}"#,
    r#"{"id":"a1","someFutureField":"\ud800"}"#,
    r#"{"id":"a1","someFutureField":"\udc00\ud800"}"#,
    r#"{"id":"a1","title":"\ud800x"}"#,
    r#"{"id":"a1","evidence":[{"future":"\udfff"}]}"#,
    r#"{"id":"a1","evidence":[{"\ud800":1}]}"#,
    r#"{"id":"a1","\ud800":1}"#,
    r#"[1e400]"#,
    r#""\ud800""#,
];

/// Of [`HOSTILE`], texts the reference refuses as not JSON although a `RawValue` holds them (a
/// number out of range, a lone surrogate): they must stay refused, with the same words.
const REFUSED_AS_NOT_JSON: usize = 12;

#[test]
fn every_simulated_alert_parses_as_the_value_tree_did() {
    let alerts = simulated(3, 300);
    assert!(alerts.len() >= 900);
    for text in &alerts {
        assert_same(text);
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(text).unwrap());
        assert_same(&pretty.unwrap());
    }
}

/// The alerts of Microsoft's Graph examples (tests/fixtures/graph): other property names, nested
/// evidence, pretty-printed text.
fn graph_examples() -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Page {
        value: Vec<Box<RawValue>>,
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/graph/");
    let read = |name: &str| std::fs::read_to_string(format!("{dir}{name}")).unwrap();
    let mut out = vec![read("graph_get-alert.json")];
    for name in [
        "graph_list-alerts_v2.json",
        "graph_list-alerts_v2_rev2022.json",
    ] {
        let page: Page = serde_json::from_str(&read(name)).unwrap();
        out.extend(page.value.iter().map(|a| a.get().to_owned()));
    }
    out
}

#[test]
fn microsofts_graph_examples_parse_as_the_value_tree_did() {
    let alerts = graph_examples();
    assert!(alerts.len() >= 3);
    for text in &alerts {
        assert_same(text);
    }
}

#[test]
fn every_shape_of_every_property_parses_as_the_value_tree_did() {
    for text in shapes_everywhere().iter().chain(&deep_values()) {
        assert_same(text);
    }
}

#[test]
fn hostile_alerts_parse_or_are_refused_as_the_value_tree_did() {
    let mut not_json = 0;
    for text in HOSTILE {
        assert_same(text);
        let refused = reference_parse_alert(text).is_err_and(|e| e.reason.starts_with("not JSON"));
        not_json += usize::from(refused);
    }
    assert_eq!(not_json, REFUSED_AS_NOT_JSON);
}
