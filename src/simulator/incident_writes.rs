//! The incident side of Graph write-back: `PATCH /v1.0/security/incidents/{id}` (`status`,
//! `classification`, `determination`, `assignedTo`, `customTags`),
//! `POST /v1.0/security/incidents/{id}/comments`, and the `GET` of one incident a writer reads
//! first (the version shown now), mirroring the `alerts_v2` writes of
//! [`super::writes`]: the token must carry `SecurityIncident.ReadWrite.All`, values are the
//! documented ones spelled exactly (the determination is the alert resource's
//! `alertDetermination`, as the incident resource declares it), and an applied write is a new
//! version whose `lastUpdateDateTime` is now (after every earlier one), visible at once. The
//! answer then passes through [`Simulator::inject`] like any other, so a fault may hit a write
//! that was already applied.

use hyper::StatusCode;
use serde_json::{Map, Value, json};

use super::graph_alerts::graph_error;
use super::http::Answer;
use super::incident_model::{IncidentComment, hide_unknown_members};
use super::state::TenantState;
use super::writes::{GRAPH_CLASSIFICATION, GRAPH_DETERMINATION};
use super::{Endpoint, Simulator, TokenInfo, key};
use crate::timestamp::Timestamp;

/// The statuses a client may set; `redirected` comes only from a merge, and `awaitingAction` is
/// an evolvable member, sent only with `Prefer: include-unknown-enum-members`.
const WRITABLE_STATUS: &[&str] = &["active", "inProgress", "resolved", "awaitingAction"];

/// One incident's change, in Graph's vocabulary.
#[derive(Default)]
struct IncidentEdit {
    status: Option<&'static str>,
    classification: Option<&'static str>,
    determination: Option<&'static str>,
    assigned_to: Option<Option<String>>,
    custom_tags: Option<Vec<String>>,
    comment: Option<String>,
}

fn one_of(k: &str, v: &Value, allowed: &[&'static str]) -> Result<&'static str, String> {
    let t = v
        .as_str()
        .ok_or_else(|| format!("The value of '{k}' must be a string."))?;
    allowed
        .iter()
        .copied()
        .find(|a| *a == t)
        .ok_or_else(|| format!("The value '{t}' is not valid for '{k}'."))
}

/// A PATCH body, checked against the incident's documented updatable properties and values.
fn parse_patch(body: &Map<String, Value>, prefer: bool) -> Result<IncidentEdit, String> {
    let mut edit = IncidentEdit::default();
    for (k, v) in body {
        match k.as_str() {
            "status" => {
                let s = one_of(k, v, WRITABLE_STATUS)?;
                if s == "awaitingAction" && !prefer {
                    return Err(format!("The value '{s}' is not valid for 'status'."));
                }
                edit.status = Some(s);
            }
            "classification" => edit.classification = Some(one_of(k, v, GRAPH_CLASSIFICATION)?),
            "determination" => edit.determination = Some(one_of(k, v, GRAPH_DETERMINATION)?),
            "assignedTo" => {
                edit.assigned_to = Some(match v {
                    Value::Null => None,
                    Value::String(s) => Some(s.clone()),
                    _ => return Err("The value of 'assignedTo' must be a string.".to_owned()),
                });
            }
            "customTags" => {
                let tags = v.as_array().and_then(|a| {
                    a.iter()
                        .map(|t| t.as_str().map(str::to_owned))
                        .collect::<Option<Vec<String>>>()
                });
                edit.custom_tags = Some(tags.ok_or_else(|| {
                    "The value of 'customTags' must be an array of strings.".to_owned()
                })?);
            }
            "@odata.type" => {}
            _ => {
                return Err(format!(
                    "The property '{k}' does not exist or cannot be updated."
                ));
            }
        }
    }
    Ok(edit)
}

/// An `alertComment` body.
fn parse_comment(body: &Map<String, Value>) -> Result<IncidentEdit, String> {
    match body.get("comment").and_then(Value::as_str) {
        Some(c) if !c.is_empty() => Ok(IncidentEdit {
            comment: Some(c.to_owned()),
            ..IncidentEdit::default()
        }),
        _ => Err("The property 'comment' is required.".to_owned()),
    }
}

impl TenantState {
    /// Applies `edit` to incident `id` as a new version at now (or just after its newest),
    /// visible at once; `None` if there is no such incident.
    fn write_incident(
        &mut self,
        id: &str,
        edit: IncidentEdit,
        now: Timestamp,
        by: &str,
    ) -> Option<()> {
        let newest = self.incident_newest(id).unwrap_or(now);
        let at = if newest < now {
            now
        } else {
            newest.plus_ticks(1)
        };
        let text = at.format_digits(7);
        let m = self.incident_models.get_mut(id)?;
        if let Some(s) = edit.status {
            m.status = s;
        }
        if let Some(c) = edit.classification {
            m.classification = c.to_owned();
        }
        if let Some(d) = edit.determination {
            m.determination = d.to_owned();
        }
        if let Some(a) = edit.assigned_to {
            m.assigned_to = a;
        }
        if let Some(tags) = edit.custom_tags {
            m.custom_tags = tags;
        }
        if let Some(c) = edit.comment {
            m.comments.push(IncidentComment {
                comment: c,
                created_by_display_name: by.to_owned(),
                created_date_time: text.clone(),
            });
        }
        m.last_modified_by = Some(by.to_owned());
        self.store_incident(id, at, &text, now);
        Some(())
    }
}

impl Simulator {
    /// `GET /security/incidents/{id}`: the version shown now, hiding the evolvable status
    /// unless `prefer_unknown`.
    pub(super) fn get_incident(
        &self,
        auth: Option<&str>,
        id: &str,
        prefer_unknown: bool,
    ) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let info = match self.graph_reader(&st, auth, now, Endpoint::Incidents) {
            Ok(i) => i,
            Err(mut a) => {
                a.endpoint = Endpoint::Other;
                return a;
            }
        };
        let k = (super::order_hash(&key(&info.tenant), id), id.to_owned());
        let shown = st
            .tenants
            .get_mut(&key(&info.tenant))
            .and_then(|ts| ts.incidents.get_mut(&k))
            .and_then(|r| r.shown(now))
            .map(|v| v.full.clone());
        let Some(text) = shown else {
            let msg = format!("Incident {id} was not found");
            let tenant = Some(info.tenant);
            return graph_error(
                Endpoint::Other,
                StatusCode::NOT_FOUND,
                "NotFound",
                &msg,
                tenant,
            );
        };
        let body = if prefer_unknown {
            text
        } else {
            hide_unknown_members(&text)
        };
        let mut a = Answer::new(Endpoint::Other, StatusCode::OK, body);
        a.tenant = Some(info.tenant);
        a
    }

    /// Graph's checks for an incident write: the reader's, then `SecurityIncident.ReadWrite.All`.
    fn incident_writer(&self, st: &super::State, auth: Option<&str>) -> Result<TokenInfo, Answer> {
        let info = self
            .graph_reader(st, auth, self.now(), Endpoint::Incidents)
            .map_err(|mut a| {
                a.endpoint = Endpoint::Other;
                a
            })?;
        if !info.write {
            return Err(graph_error(
                Endpoint::Other,
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Missing application roles. API required roles: SecurityIncident.ReadWrite.All. Application roles: SecurityIncident.Read.All.",
                Some(info.tenant),
            ));
        }
        Ok(info)
    }

    /// `PATCH /security/incidents/{id}`, answering the updated incident, or with `comment` the
    /// `POST …/comments` that answers the incident's comments.
    pub(super) fn incident_write(
        &self,
        auth: Option<&str>,
        id: &str,
        body: &[u8],
        comment: bool,
        prefer_unknown: bool,
    ) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let info = match self.incident_writer(&st, auth) {
            Ok(i) => i,
            Err(a) => return a,
        };
        let tenant = info.tenant;
        let fail = |status: StatusCode, code: &str, msg: &str| {
            graph_error(Endpoint::Other, status, code, msg, Some(tenant.clone()))
        };
        let edit = match serde_json::from_slice::<Map<String, Value>>(body) {
            Ok(b) if comment => parse_comment(&b),
            Ok(b) => parse_patch(&b, prefer_unknown),
            Err(_) => Err("The request body is not a JSON object.".to_owned()),
        };
        let edit = match edit {
            Ok(e) => e,
            Err(msg) => return fail(StatusCode::BAD_REQUEST, "BadRequest", &msg),
        };
        let by = format!("API-App:{}", self.cfg.client_id);
        let Some(ts) = st.tenants.get_mut(&key(&tenant)) else {
            return fail(StatusCode::NOT_FOUND, "NotFound", "No such tenant.");
        };
        if ts.write_incident(id, edit, now, &by).is_none() {
            let msg = format!("Incident {id} was not found");
            return fail(StatusCode::NOT_FOUND, "NotFound", &msg);
        }
        let text = ts
            .incidents
            .get(&(super::order_hash(&key(&tenant), id), id.to_owned()))
            .and_then(|r| r.versions.last())
            .map(|v| v.full.clone())
            .unwrap_or_default();
        let body = if comment {
            let comments = ts.incident_models.get(id).map(|m| m.comments.clone());
            json!({
                "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#Collection(microsoft.graph.security.alertComment)",
                "value": comments.unwrap_or_default(),
            })
            .to_string()
        } else if prefer_unknown {
            text
        } else {
            hide_unknown_members(&text)
        };
        let mut a = Answer::new(Endpoint::Other, StatusCode::OK, body);
        a.tenant = Some(tenant);
        a
    }
}
