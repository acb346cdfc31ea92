//! The write side of both APIs, and the single-alert GETs a writer reads first: MDE
//! `GET`/`PATCH /api/alerts/{id}`, Graph `GET`/`PATCH /v1.0/security/alerts_v2/{id}` and
//! `POST /v1.0/security/alerts_v2/{id}/comments`.
//!
//! A write needs the write role in the token (`Alert.ReadWrite.All`, `SecurityAlert.ReadWrite.All`:
//! [`super::SimConfig::write_tenants`]) and the documented enum values, spelled exactly (write
//! bodies are case-sensitive); anything else is refused as the API refuses it. An applied write
//! is a new version of the alert whose `lastUpdateTime` is now (later than every earlier
//! version), visible at once, so the next sync brings it back. Random churn leaves a written alert
//! alone from then on. The answer then passes through [`Simulator::inject`] like any other: a
//! fault there (reset, 429, 5xx) hits a write that was already applied, which is what an
//! exactly-once writer must survive.

use hyper::StatusCode;
use serde_json::{Map, Value, json};

use super::http::{Answer, mde_error};
use super::{Endpoint, Simulator, State, TokenInfo, key, order_hash};
use crate::timestamp::Timestamp;

const MDE_STATUS: &[&str] = &["New", "InProgress", "Resolved"];
const MDE_CLASSIFICATION: &[&str] = &[
    "TruePositive",
    "InformationalExpectedActivity",
    "FalsePositive",
];
const MDE_DETERMINATION: &[&str] = &[
    "MultiStagedAttack",
    "MaliciousUserActivity",
    "CompromisedUser",
    "Malware",
    "Phishing",
    "UnwantedSoftware",
    "Other",
    "SecurityTesting",
    "LineOfBusinessApplication",
    "ConfirmedUserActivity",
    "Clean",
    "InsufficientData",
];
const GRAPH_STATUS: &[&str] = &["new", "inProgress", "resolved"];
pub(super) const GRAPH_CLASSIFICATION: &[&str] = &[
    "unknown",
    "falsePositive",
    "truePositive",
    "informationalExpectedActivity",
];
/// `alertDetermination` as the alert resource documents it (not the incident page's names).
pub(super) const GRAPH_DETERMINATION: &[&str] = &[
    "unknown",
    "apt",
    "malware",
    "securityPersonnel",
    "securityTesting",
    "unwantedSoftware",
    "other",
    "multiStagedAttack",
    "compromisedAccount",
    "phishing",
    "maliciousUserActivity",
    "notMalicious",
    "notEnoughDataToValidate",
    "confirmedActivity",
    "lineOfBusinessApplication",
];

/// Which API a request came to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Api {
    Mde,
    Graph,
}

/// One alert's change, in the MDE vocabulary the simulator keeps alerts in.
#[derive(Default)]
struct Edit {
    set: Vec<(&'static str, Value)>,
    comment: Option<String>,
}

fn error(api: Api, status: StatusCode, code: &str, message: &str, tenant: &str) -> Answer {
    let mut a = match api {
        Api::Mde => mde_error(Endpoint::Other, status, code, message),
        Api::Graph => {
            let body = json!({"error": {"code": code, "message": message,
                "innerError": {"request-id": format!("{:08x}-0000-4000-8000-000000000000", fastrand::u32(..))}}});
            Answer::new(Endpoint::Other, status, body.to_string())
        }
    };
    a.tenant = Some(tenant.to_owned());
    a
}

fn bad(api: Api, tenant: &str, message: &str) -> Answer {
    let code = if api == Api::Mde {
        "InvalidRequestBody"
    } else {
        "BadRequest"
    };
    error(api, StatusCode::BAD_REQUEST, code, message, tenant)
}

impl Simulator {
    /// The token's tenant if it may call `api` (and write, if `write`), or the API's refusal.
    fn authorize(
        &self,
        st: &State,
        auth: Option<&str>,
        api: Api,
        write: bool,
    ) -> Result<TokenInfo, Answer> {
        let now = self.now();
        let unauthorized = |tenant: Option<String>| {
            let mut a = match api {
                Api::Mde => mde_error(
                    Endpoint::Other,
                    StatusCode::UNAUTHORIZED,
                    "Unauthorized",
                    "Authorization token is missing, invalid or expired.",
                ),
                Api::Graph => error(
                    Api::Graph,
                    StatusCode::UNAUTHORIZED,
                    "InvalidAuthenticationToken",
                    "Access token is empty, invalid or expired.",
                    "",
                ),
            };
            a.tenant = tenant;
            a.www_authenticate = true;
            a
        };
        let Some(info) = st.bearer(auth) else {
            return Err(unauthorized(None));
        };
        if info.exp <= now || info.graph != (api == Api::Graph) {
            return Err(unauthorized(Some(info.tenant)));
        }
        let forbidden = |msg: &str| {
            Err(error(
                api,
                StatusCode::FORBIDDEN,
                "Forbidden",
                msg,
                &info.tenant,
            ))
        };
        match api {
            Api::Mde if !info.has_role => {
                return forbidden(
                    "The application does not have any of the required application permissions (Alert.ReadWrite.All, Alert.Read.All) to access the resource.",
                );
            }
            Api::Mde if write && !info.write => {
                return forbidden(
                    "The application does not have any of the required application permissions (Alert.ReadWrite.All) to access the resource.",
                );
            }
            Api::Graph if !info.has_role => {
                return forbidden(
                    "Missing application roles. API required roles: SecurityAlert.Read.All, SecurityAlert.ReadWrite.All. Application roles: .",
                );
            }
            Api::Graph if write && !info.write => {
                return forbidden(
                    "Missing application roles. API required roles: SecurityAlert.ReadWrite.All. Application roles: SecurityAlert.Read.All.",
                );
            }
            Api::Graph if !info.licensed => {
                return forbidden("The tenant is not onboarded to Microsoft Defender XDR.");
            }
            _ => {}
        }
        Ok(info)
    }

    /// `GET` one alert: the version shown now, in the API's form.
    pub(super) fn get_alert(&self, auth: Option<&str>, id: &str, graph: bool) -> Answer {
        let api = if graph { Api::Graph } else { Api::Mde };
        let now = self.now();
        let mut st = self.lock();
        let info = match self.authorize(&st, auth, api, false) {
            Ok(i) => i,
            Err(a) => return a,
        };
        match shown_text(&mut st, &info.tenant, id, now, false) {
            Some(text) => ok(api, &text, &info.tenant),
            None => not_found(api, id, &info.tenant),
        }
    }

    /// MDE `PATCH /api/alerts/{id}` with `status`, `assignedTo`, `classification`,
    /// `determination`, `comment`: answers the updated alert.
    pub(super) fn mde_patch(&self, auth: Option<&str>, id: &str, body: &[u8]) -> Answer {
        self.write(auth, id, body, Api::Mde, false)
    }

    /// Graph `PATCH /security/alerts_v2/{id}` (`status`, `classification`, `determination`,
    /// `assignedTo`), or with `comment` the `POST …/comments` that answers the alert's comments.
    pub(super) fn graph_write(
        &self,
        auth: Option<&str>,
        id: &str,
        body: &[u8],
        comment: bool,
    ) -> Answer {
        self.write(auth, id, body, Api::Graph, comment)
    }

    fn write(&self, auth: Option<&str>, id: &str, body: &[u8], api: Api, comment: bool) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let info = match self.authorize(&st, auth, api, true) {
            Ok(i) => i,
            Err(a) => return a,
        };
        let tenant = info.tenant.clone();
        let edit = match serde_json::from_slice::<Map<String, Value>>(body) {
            Ok(b) if comment => graph_comment(&b),
            Ok(b) => parse_edit(api, &b),
            Err(_) => Err("The request body is not a JSON object.".to_owned()),
        };
        let edit = match edit {
            Ok(e) => e,
            Err(msg) => return bad(api, &tenant, &msg),
        };
        let Some(text) = shown_text(&mut st, &tenant, id, now, true) else {
            return not_found(api, id, &tenant);
        };
        let newest = newest_update(&st, &tenant, id).unwrap_or(now);
        let at = if newest < now {
            now
        } else {
            newest.plus_ticks(1)
        };
        let mut alert: Map<String, Value> = serde_json::from_str(&text).unwrap_or_default();
        apply(
            &mut alert,
            edit,
            at,
            &format!("API-App:{}", self.cfg.client_id),
        );
        let written = Value::Object(alert.clone());
        st.insert_raw(&tenant, written.clone(), at, now);
        let (rng, ts) = st.tenant(&tenant);
        ts.settle_incidents(rng, self.cfg.max_lag, None);
        if comment {
            let comments = super::graph::to_graph(&written.to_string())
                .and_then(|g| serde_json::from_str::<Value>(&g).ok())
                .and_then(|g| g.get("comments").cloned())
                .unwrap_or(json!([]));
            let body = json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.security.alertComment)", "value": comments});
            let mut a = Answer::new(Endpoint::Other, StatusCode::OK, body.to_string());
            a.tenant = Some(tenant);
            return a;
        }
        alert.insert("evidence".into(), json!([]));
        ok(api, &Value::Object(alert).to_string(), &tenant)
    }
}

fn ok(api: Api, mde_text: &str, tenant: &str) -> Answer {
    let text = match api {
        Api::Mde => mde_text.to_owned(),
        Api::Graph => super::graph::to_graph(mde_text).unwrap_or_else(|| mde_text.to_owned()),
    };
    let mut a = Answer::new(Endpoint::Other, StatusCode::OK, text);
    a.tenant = Some(tenant.to_owned());
    a
}

fn not_found(api: Api, id: &str, tenant: &str) -> Answer {
    let code = if api == Api::Mde {
        "ResourceNotFound"
    } else {
        "NotFound"
    };
    error(
        api,
        StatusCode::NOT_FOUND,
        code,
        &format!("Alert {id} was not found"),
        tenant,
    )
}

/// The text (MDE form, with its evidence if `expand`) of the alert's version shown now.
fn shown_text(
    st: &mut State,
    tenant: &str,
    id: &str,
    now: Timestamp,
    expand: bool,
) -> Option<String> {
    let ts = st.tenants.get_mut(&key(tenant))?;
    let rec = ts
        .alerts
        .get_mut(&(order_hash(&key(tenant), id), id.to_owned()))?;
    let mut out = String::new();
    rec.shown(now)?.write(expand, &mut out);
    Some(out)
}

fn newest_update(st: &State, tenant: &str, id: &str) -> Option<Timestamp> {
    let rec = st
        .tenants
        .get(&key(tenant))?
        .alerts
        .get(&(order_hash(&key(tenant), id), id.to_owned()))?;
    rec.versions.last().map(|v| v.last_update)
}

/// A PATCH body, checked against the API's documented properties and values.
fn parse_edit(api: Api, body: &Map<String, Value>) -> Result<Edit, String> {
    let mut edit = Edit::default();
    for (k, v) in body {
        let text = || {
            v.as_str()
                .ok_or_else(|| format!("The value of '{k}' must be a string."))
        };
        let one_of = |allowed: &[&'static str]| -> Result<&'static str, String> {
            let t = text()?;
            allowed
                .iter()
                .copied()
                .find(|a| *a == t)
                .ok_or_else(|| format!("The value '{t}' is not valid for '{k}'."))
        };
        match (api, k.as_str()) {
            (Api::Mde, "status") => edit.set.push(("status", one_of(MDE_STATUS)?.into())),
            (Api::Mde, "classification") => edit
                .set
                .push(("classification", one_of(MDE_CLASSIFICATION)?.into())),
            (Api::Mde, "determination") => edit
                .set
                .push(("determination", one_of(MDE_DETERMINATION)?.into())),
            (Api::Mde, "comment") => edit.comment = Some(text()?.to_owned()),
            (Api::Graph, "status") => {
                let s = one_of(GRAPH_STATUS)?;
                edit.set
                    .push(("status", crate::graph::model::pascal(s).into()));
            }
            (Api::Graph, "classification") => {
                let c = crate::graph::model::classification(one_of(GRAPH_CLASSIFICATION)?);
                edit.set
                    .push(("classification", c.map_or(Value::Null, Value::from)));
            }
            (Api::Graph, "determination") => {
                let d = crate::graph::model::determination(one_of(GRAPH_DETERMINATION)?);
                edit.set
                    .push(("determination", d.map_or(Value::Null, Value::from)));
            }
            (_, "assignedTo") => edit.set.push(("assignedTo", text()?.into())),
            (Api::Graph, "@odata.type") => {}
            _ => {
                return Err(format!(
                    "The property '{k}' does not exist or cannot be updated."
                ));
            }
        }
    }
    Ok(edit)
}

/// A Graph `alertComment` body.
fn graph_comment(body: &Map<String, Value>) -> Result<Edit, String> {
    match body.get("comment").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => Ok(Edit {
            set: Vec::new(),
            comment: Some(c.to_owned()),
        }),
        _ => Err("The property 'comment' is required.".to_owned()),
    }
}

fn apply(alert: &mut Map<String, Value>, edit: Edit, at: Timestamp, by: &str) {
    for (k, v) in edit.set {
        if k == "status" {
            let resolved = v == "Resolved";
            alert.insert(
                "resolvedTime".into(),
                if resolved {
                    at.format_digits(7).into()
                } else {
                    Value::Null
                },
            );
        }
        alert.insert(k.into(), v);
    }
    if let Some(c) = edit.comment {
        let list = alert.entry("comments").or_insert_with(|| json!([]));
        if let Value::Array(items) = list {
            items.push(json!({"comment": c, "createdBy": by, "createdTime": at.format_digits(7)}));
        }
    }
    alert.insert("lastUpdateTime".into(), at.format_digits(7).into());
}
