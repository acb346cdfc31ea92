//! The simulator's Microsoft Graph `alerts_v2`: every alert the simulator holds, rendered the way
//! Graph shows a Defender for Endpoint alert (graph-alerts-v2.md §6, §8 and Microsoft's response
//! examples): camelCase enums, `lastUpdateDateTime`, a string `incidentId`, polymorphic evidence
//! led by the alert's `deviceEvidence`, and `id` equal to the MDE id. Properties it does not know
//! (raw inserts) pass through unchanged, so malformed and foreign alerts stay what they were.
//!
//! The rendering is a pure function of the MDE text, so [`super::Simulator::truth_as`] and a
//! response agree byte for byte.

use serde_json::{Map, Value, json};

use super::odata::{Filter, parse_count, parse_filter_on};
use crate::timestamp::Timestamp;

/// Graph's page-size clamp for the security API: a larger `$top` is served as this many.
pub(crate) const GRAPH_MAX_TOP: usize = 1_000;

/// What a Graph `alerts_v2` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GraphQuery {
    pub top: usize,
    pub skip: usize,
    /// The filter, with `serviceSource eq '…'` if it names one.
    pub filter: Filter,
}

impl GraphQuery {
    pub fn matches(&self, last_update: Timestamp, created: Option<Timestamp>) -> bool {
        self.filter.matches(last_update, created)
    }
}

/// Parses a Graph query string: `$top` (clamped, as Graph does), `$skip`, `$count` (ignored) and
/// a `$filter` of `lastUpdateDateTime <op> <literal>` and `serviceSource eq '<value>'` terms.
pub(crate) fn parse_graph_query(raw: Option<&str>) -> Result<GraphQuery, String> {
    let mut q = GraphQuery {
        top: GRAPH_MAX_TOP,
        skip: 0,
        filter: Filter::default(),
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "$top" => q.top = parse_count("$top", &value)?.min(GRAPH_MAX_TOP),
            "$skip" => q.skip = parse_count("$skip", &value)?,
            "$count" => {}
            "$filter" => {
                q.filter =
                    parse_filter_on(&value, ["lastUpdateDateTime", "createdDateTime"], true)?;
            }
            k if k.starts_with('$') => {
                return Err(format!("Query option '{k}' is not supported."));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `InProgress` -> `inProgress`.
pub(crate) fn camel(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

fn enum_value(v: Option<&Value>, map: fn(&str) -> String, unset: Option<&str>) -> Value {
    match v {
        Some(Value::String(s)) => Value::String(map(s)),
        None | Some(Value::Null) => unset.map_or(Value::Null, |u| Value::String(u.into())),
        Some(other) => other.clone(),
    }
}

fn severity(s: &str) -> String {
    match s {
        "UnSpecified" => "unknown".into(),
        other => camel(other),
    }
}

pub(crate) fn determination(s: &str) -> String {
    match s {
        "CompromisedUser" => "compromisedAccount".into(),
        "Clean" => "notMalicious".into(),
        "InsufficientData" => "notEnoughDataToValidate".into(),
        "ConfirmedUserActivity" => "confirmedActivity".into(),
        other => camel(other),
    }
}

fn detection_source(s: &str) -> String {
    match s {
        "WindowsDefenderAtp" => "microsoftDefenderForEndpoint".into(),
        "WindowsDefenderAv" => "antivirus".into(),
        "CustomerTI" => "customTi".into(),
        other => camel(other),
    }
}

/// The alert as Graph renders it; `None` if `mde_text` is not a JSON object (served as is).
pub(crate) fn to_graph(mde_text: &str) -> Option<String> {
    let Ok(Value::Object(mut a)) = serde_json::from_str::<Value>(mde_text) else {
        return None;
    };
    let mut g = Map::new();
    let mut take = |k: &str| a.remove(k);
    let id = take("id");
    let tenant = take("aadTenantId");
    let incident = match take("incidentId") {
        Some(Value::Number(n)) => Value::String(n.to_string()),
        Some(other) => other,
        None => Value::Null,
    };
    let id_text = id.as_ref().and_then(Value::as_str).unwrap_or("").to_owned();
    let tid = tenant
        .as_ref()
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    g.insert(
        "@odata.type".into(),
        "#microsoft.graph.security.alert".into(),
    );
    if let Some(id) = id {
        g.insert("id".into(), id.clone());
        g.insert("providerAlertId".into(), id);
    }
    g.insert("incidentId".into(), incident.clone());
    g.insert(
        "status".into(),
        enum_value(take("status").as_ref(), camel, None),
    );
    g.insert(
        "severity".into(),
        enum_value(take("severity").as_ref(), severity, None),
    );
    g.insert(
        "classification".into(),
        enum_value(take("classification").as_ref(), camel, Some("unknown")),
    );
    g.insert(
        "determination".into(),
        enum_value(
            take("determination").as_ref(),
            determination,
            Some("unknown"),
        ),
    );
    g.insert(
        "investigationState".into(),
        enum_value(take("investigationState").as_ref(), camel, None),
    );
    // generated alerts are Defender for Endpoint alerts; a raw insert may name another product
    let service = take("serviceSource").unwrap_or_else(|| "microsoftDefenderForEndpoint".into());
    g.insert("serviceSource".into(), service);
    g.insert(
        "detectionSource".into(),
        enum_value(take("detectionSource").as_ref(), detection_source, None),
    );
    for (from, to) in [
        ("detectorId", "detectorId"),
        ("title", "title"),
        ("description", "description"),
        ("category", "category"),
        ("assignedTo", "assignedTo"),
        ("threatFamilyName", "threatFamilyName"),
        ("threatName", "threatDisplayName"),
        ("mitreTechniques", "mitreTechniques"),
        ("alertCreationTime", "createdDateTime"),
        ("lastUpdateTime", "lastUpdateDateTime"),
        ("firstEventTime", "firstActivityDateTime"),
        ("lastEventTime", "lastActivityDateTime"),
        ("resolvedTime", "resolvedDateTime"),
    ] {
        if let Some(v) = take(from) {
            g.insert(to.into(), v);
        }
    }
    if tenant.is_some() {
        g.insert("tenantId".into(), tenant.unwrap_or(Value::Null));
    }
    if !id_text.is_empty() {
        g.insert(
            "alertWebUrl".into(),
            format!("https://security.microsoft.com/alerts/{id_text}?tid={tid}").into(),
        );
    }
    if let Value::String(inc) = &incident {
        g.insert(
            "incidentWebUrl".into(),
            format!("https://security.microsoft.com/incidents/{inc}?tid={tid}").into(),
        );
    }
    g.insert("actorDisplayName".into(), Value::Null);
    g.insert("systemTags".into(), json!([]));
    if let Some(Value::Array(comments)) = take("comments") {
        let mapped: Vec<Value> = comments
            .into_iter()
            .map(|c| {
                json!({
                    "comment": c.get("comment").cloned().unwrap_or(Value::Null),
                    "createdByDisplayName": c.get("createdBy").cloned().unwrap_or(Value::Null),
                    "createdDateTime": c.get("createdTime").cloned().unwrap_or(Value::Null),
                })
            })
            .collect();
        g.insert("comments".into(), Value::Array(mapped));
    }
    let machine = take("machineId");
    let dns = take("computerDnsName");
    let group = take("rbacGroupName");
    take("relatedUser");
    take("investigationId");
    let evidence = take("evidence");
    let mut items: Vec<Value> = Vec::new();
    if let Some(Value::String(m)) = &machine {
        items.push(json!({
            "@odata.type": "#microsoft.graph.security.deviceEvidence",
            "createdDateTime": g.get("createdDateTime").cloned().unwrap_or(Value::Null),
            "verdict": "suspicious",
            "remediationStatus": "none",
            "remediationStatusDetails": null,
            "mdeDeviceId": m,
            "azureAdDeviceId": null,
            "deviceDnsName": dns.clone().unwrap_or(Value::Null),
            "osPlatform": "Windows11",
            "rbacGroupName": group.clone().unwrap_or(Value::Null),
            "roles": ["compromised"],
            "detailedRoles": ["Main device"],
            "tags": [],
            "loggedOnUsers": [],
        }));
    }
    let device = machine.clone().unwrap_or(Value::Null);
    match evidence {
        Some(Value::Array(list)) => {
            items.extend(list.into_iter().map(|e| evidence_to_graph(e, &device)));
            g.insert("evidence".into(), Value::Array(items));
        }
        Some(other) => {
            g.insert("evidence".into(), other);
        }
        None if !items.is_empty() => {
            g.insert("evidence".into(), Value::Array(items));
        }
        None => {}
    }
    // what Graph does not rename passes through (unknown and future properties)
    for (k, v) in a {
        g.entry(k).or_insert(v);
    }
    Some(Value::Object(g).to_string())
}

/// The `serviceSource` property of an alert's text.
pub(crate) fn service_source(graph_text: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(rename = "serviceSource")]
        service_source: Option<String>,
    }
    serde_json::from_str::<Only>(graph_text)
        .ok()?
        .service_source
}

fn evidence_to_graph(e: Value, device: &Value) -> Value {
    let Value::Object(mut e) = e else { return e };
    let mut take = |k: &str| e.remove(k).unwrap_or(Value::Null);
    let kind = take("entityType");
    let kind = kind.as_str().unwrap_or("Unknown").to_owned();
    let mut g = Map::new();
    let odata = match kind.as_str() {
        "User" => "userEvidence",
        "Process" => "processEvidence",
        "File" => "fileEvidence",
        "Ip" => "ipEvidence",
        "Url" => "urlEvidence",
        "Registry" => "registryValueEvidence",
        _ => "",
    };
    let odata = if odata.is_empty() {
        format!("#microsoft.graph.security.{}Evidence", camel(&kind))
    } else {
        format!("#microsoft.graph.security.{odata}")
    };
    g.insert("@odata.type".into(), odata.into());
    g.insert("createdDateTime".into(), take("evidenceCreationTime"));
    g.insert("verdict".into(), "suspicious".into());
    g.insert("remediationStatus".into(), "none".into());
    g.insert("remediationStatusDetails".into(), Value::Null);
    g.insert("roles".into(), json!([]));
    g.insert("detailedRoles".into(), json!([]));
    g.insert("tags".into(), json!([]));
    let detection = match take("detectionStatus") {
        Value::String(s) => Value::String(camel(&s)),
        other => other,
    };
    let file = json!({
        "sha1": take("sha1"),
        "sha256": take("sha256"),
        "fileName": take("fileName"),
        "filePath": take("filePath"),
        "filePublisher": null,
        "signer": null,
        "issuer": null,
    });
    match kind.as_str() {
        "User" => {
            g.insert(
                "userAccount".into(),
                json!({
                    "accountName": take("accountName"),
                    "domainName": take("domainName"),
                    "userSid": take("userSid"),
                    "azureAdUserId": take("aadUserId"),
                    "userPrincipalName": take("userPrincipalName"),
                    "displayName": null,
                }),
            );
        }
        "Process" => {
            g.insert("processId".into(), take("processId"));
            g.insert("processCommandLine".into(), take("processCommandLine"));
            g.insert(
                "processCreationDateTime".into(),
                take("processCreationTime"),
            );
            g.insert("parentProcessId".into(), take("parentProcessId"));
            g.insert(
                "parentProcessCreationDateTime".into(),
                take("parentProcessCreationTime"),
            );
            g.insert("detectionStatus".into(), detection);
            g.insert("mdeDeviceId".into(), device.clone());
            g.insert("imageFile".into(), file);
            g.insert(
                "parentProcessImageFile".into(),
                json!({
                    "fileName": take("parentProcessFileName"),
                    "filePath": take("parentProcessFilePath"),
                }),
            );
        }
        "File" => {
            g.insert("detectionStatus".into(), detection);
            g.insert("mdeDeviceId".into(), device.clone());
            g.insert("fileDetails".into(), file);
        }
        "Ip" => {
            g.insert("ipAddress".into(), take("ipAddress"));
            g.insert("countryLetterCode".into(), Value::Null);
        }
        "Url" => {
            g.insert("url".into(), take("url"));
        }
        "Registry" => {
            g.insert("registryKey".into(), take("registryKey"));
            g.insert("registryHive".into(), take("registryHive"));
            g.insert("registryValueType".into(), take("registryValueType"));
            g.insert("registryValue".into(), take("registryValue"));
            g.insert("mdeDeviceId".into(), device.clone());
        }
        _ => {}
    }
    // keep anything left that carries a value (unknown evidence types, future properties)
    for (k, v) in e {
        if !v.is_null() {
            g.entry(k).or_insert(v);
        }
    }
    Value::Object(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mde_alert_is_rendered_as_graph_renders_it() {
        let mde = r#"{"id":"da1_-2","incidentId":42,"severity":"UnSpecified","status":"InProgress","classification":null,"determination":"Clean","detectionSource":"WindowsDefenderAv","aadTenantId":"00000000-0000-4000-a000-000000000001","lastUpdateTime":"2026-01-01T00:00:00.12Z","machineId":"abc","computerDnsName":"pc1","evidence":[{"entityType":"File","evidenceCreationTime":"2026-01-01T00:00:00Z","sha1":"s1","fileName":"a.exe","detectionStatus":"Blocked"}],"someFutureField":1}"#;
        let g: Value = serde_json::from_str(&to_graph(mde).unwrap()).unwrap();
        assert_eq!(g["id"], "da1_-2");
        assert_eq!(g["providerAlertId"], "da1_-2");
        assert_eq!(g["incidentId"], "42");
        assert_eq!(g["severity"], "unknown");
        assert_eq!(g["status"], "inProgress");
        assert_eq!(g["classification"], "unknown");
        assert_eq!(g["determination"], "notMalicious");
        assert_eq!(g["detectionSource"], "antivirus");
        assert_eq!(g["lastUpdateDateTime"], "2026-01-01T00:00:00.12Z");
        assert_eq!(g["tenantId"], "00000000-0000-4000-a000-000000000001");
        assert_eq!(g["someFutureField"], 1);
        let ev = g["evidence"].as_array().unwrap();
        assert_eq!(
            ev[0]["@odata.type"],
            "#microsoft.graph.security.deviceEvidence"
        );
        assert_eq!(ev[0]["mdeDeviceId"], "abc");
        assert_eq!(
            ev[1]["@odata.type"],
            "#microsoft.graph.security.fileEvidence"
        );
        assert_eq!(ev[1]["fileDetails"]["sha1"], "s1");
        assert_eq!(ev[1]["detectionStatus"], "blocked");
        assert_eq!(to_graph(mde), to_graph(mde), "the same text every time");
    }

    #[test]
    fn graph_queries_clamp_top_and_read_the_service_source() {
        let q = parse_graph_query(Some(
            "$filter=serviceSource+eq+'microsoftDefenderForEndpoint'+and+lastUpdateDateTime+ge+2026-01-01T00:00:00Z&$top=5000&$skip=3",
        ))
        .unwrap();
        assert_eq!(q.top, GRAPH_MAX_TOP);
        assert_eq!(q.skip, 3);
        assert_eq!(
            q.filter.service_source.as_deref(),
            Some("microsoftDefenderForEndpoint")
        );
        assert_eq!(q.filter.time.len(), 1);
        assert!(parse_graph_query(Some("$filter=lastUpdateTime+ge+2026-01-01T00:00:00Z")).is_err());
        assert!(parse_graph_query(Some("$orderby=x")).is_err());
    }
}
