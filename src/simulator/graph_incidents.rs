//! The Microsoft Graph incidents endpoint (`GET /v1.0/security/incidents`), served the way
//! `alerts_v2` is ([`super::graph_alerts`]): the same token checks (plus
//! `SecurityIncident.Read.All`), `$filter` slice, `$skip` limit, next links, short pages, served
//! order, churn and faults. Its own documented limits: `$top` above 50 is refused with 400,
//! `$expand=alerts` answers a persistent 500 on a tenant with more than
//! [`super::SimConfig::incidents_expand_limit`] incidents, and the evolvable status
//! `awaitingAction` reads `unknownFutureValue` without `Prefer: include-unknown-enum-members`.

use std::collections::HashMap;

use hyper::StatusCode;

use super::graph_alerts::{GRAPH_MAX_SKIP, graph_error, next_link, page_answer, page_body};
use super::http::Answer;
use super::incident_model::hide_unknown_members;
use super::odata::{Filter, parse_count, parse_filter_on};
use super::state::{TenantState, matching_in};
use super::{Endpoint, Simulator, key};
use crate::timestamp::Timestamp;

/// The documented page-size limit of `security/incidents`: a larger `$top` is answered 400.
pub(crate) const INCIDENTS_MAX_TOP: usize = 50;

const CONTEXT: &str = "https://graph.microsoft.com/v1.0/$metadata#security/incidents";

/// What a `security/incidents` request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IncidentQuery {
    pub top: usize,
    pub skip: usize,
    pub filter: Filter,
    pub expand_alerts: bool,
}

/// Parses `$top` (at most 50), `$skip`, `$count` (ignored), `$expand=alerts` and a `$filter` of
/// `lastUpdateDateTime` and `createdDateTime` terms (the grammar `alerts_v2` accepts, without
/// `serviceSource`, which incidents do not have).
pub(crate) fn parse_incident_query(raw: Option<&str>) -> Result<IncidentQuery, String> {
    let mut q = IncidentQuery {
        top: INCIDENTS_MAX_TOP,
        skip: 0,
        filter: Filter::default(),
        expand_alerts: false,
    };
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*key {
            "$top" => {
                let top = parse_count("$top", &value)?;
                if top > INCIDENTS_MAX_TOP {
                    return Err(format!(
                        "The limit of '{INCIDENTS_MAX_TOP}' for Top query has been exceeded. The value from the incoming request is '{top}'."
                    ));
                }
                q.top = top;
            }
            "$skip" => q.skip = parse_count("$skip", &value)?,
            "$count" => {}
            "$expand" if value.trim() == "alerts" => q.expand_alerts = true,
            "$expand" => {
                return Err(format!(
                    "Could not find a property named '{value}' on type 'microsoft.graph.security.incident'."
                ));
            }
            "$filter" => {
                q.filter =
                    parse_filter_on(&value, ["lastUpdateDateTime", "createdDateTime"], false)?;
            }
            k if k.starts_with('$') => {
                return Err(format!("Query option '{k}' is not supported."));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// Incident id -> the Graph text of each alert whose version shown at `now` names it.
fn alerts_by_incident(ts: &mut TenantState, now: Timestamp) -> HashMap<String, Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Only {
        #[serde(rename = "incidentId")]
        incident_id: Option<serde_json::Value>,
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for rec in ts.alerts.values_mut() {
        let Some(v) = rec.shown(now) else { continue };
        let mut text = String::new();
        v.write(true, &mut text);
        let graph = super::graph::to_graph(&text).unwrap_or(text);
        let incident = match serde_json::from_str::<Only>(&graph)
            .ok()
            .and_then(|o| o.incident_id)
        {
            Some(serde_json::Value::String(s)) => s,
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => continue,
        };
        out.entry(incident).or_default().push(graph);
    }
    out
}

/// `text` (an incident object) with an `alerts` array of `alerts` spliced in last.
fn with_alerts(text: &str, alerts: Option<&Vec<String>>) -> String {
    let body = text.strip_suffix('}').unwrap_or(text);
    let list = alerts.map_or_else(String::new, |a| a.join(","));
    format!("{body},\"alerts\":[{list}]}}")
}

impl Simulator {
    /// `GET /v1.0/security/incidents`: the tenant's incidents in Graph's form; `prefer_unknown`
    /// is whether the request sent `Prefer: include-unknown-enum-members`.
    pub(super) fn graph_incidents(
        &self,
        auth: Option<&str>,
        query: Option<&str>,
        base: &str,
        prefer_unknown: bool,
    ) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let info = match self.graph_reader(&st, auth, now, Endpoint::Incidents) {
            Ok(info) => info,
            Err(a) => return a,
        };
        let fail = |status: StatusCode, code: &str, msg: &str| {
            graph_error(
                Endpoint::Incidents,
                status,
                code,
                msg,
                Some(info.tenant.clone()),
            )
        };
        let q = match parse_incident_query(query) {
            Ok(q) => q,
            Err(msg) => return fail(StatusCode::BAD_REQUEST, "BadRequest", &msg),
        };
        if q.skip > GRAPH_MAX_SKIP {
            let msg = format!("The $skip query parameter has a limit of {GRAPH_MAX_SKIP}.");
            return fail(StatusCode::BAD_REQUEST, "BadRequest", &msg);
        }
        let count = st
            .tenants
            .get(&key(&info.tenant))
            .map_or(0, |t| t.incidents.len());
        if q.expand_alerts && count > self.cfg.incidents_expand_limit {
            // graph-incidents.md: persistent 500s on large tenants (elastic/integrations#18144)
            return fail(StatusCode::INTERNAL_SERVER_ERROR, "UnknownError", "");
        }
        let top = q.top.min(self.cfg.graph_max_top.max(1));
        self.churn_on_request(&mut st, &info.tenant, now);
        let st = &mut *st;
        let short = st.rng.f64() < self.cfg.faults.rate_short_page;
        let short_len = if st.rng.bool() {
            0
        } else {
            st.rng.usize(0..top.max(1))
        };
        let ts = st
            .tenants
            .get_mut(&key(&info.tenant))
            .expect("tokens are only issued for simulated tenants");
        let order = self.cfg.faults.order;
        let keys = matching_in(&mut ts.incidents, now, order, &mut st.rng, |v| {
            q.filter.matches(v.last_update, v.created)
        });
        let skip = if self.cfg.faults.ignore_skip {
            0
        } else {
            q.skip
        };
        let mut more = keys.len() > skip + top;
        let alerts = q.expand_alerts.then(|| alerts_by_incident(ts, now));
        let mut items: Vec<String> = Vec::new();
        for k in keys.iter().skip(skip).take(top) {
            let shown = ts.incidents.get_mut(k).and_then(|r| r.shown(now));
            let full = &shown.expect("listed just now").full;
            let text = if prefer_unknown {
                full.clone()
            } else {
                hide_unknown_members(full)
            };
            items.push(match &alerts {
                Some(by) => with_alerts(&text, by.get(&k.1)),
                None => text,
            });
        }
        if short && short_len < items.len() {
            items.truncate(short_len);
            more = true;
        }
        let next = more.then(|| next_link(base, query, q.skip + items.len()));
        let context = if q.expand_alerts {
            format!("{CONTEXT}(alerts())")
        } else {
            CONTEXT.to_owned()
        };
        let body = page_body(&context, &items, next);
        let n = items.len();
        page_answer(Endpoint::Incidents, body, info.tenant, n)
    }
}
